"""Attributes every slice of one volume must share: a stack whose slices disagree on them is refused (listed with the
reason), never merged into one silently wrong volume.

A stack is one SeriesInstanceUID of one orientation, size and pixel spacing (:func:`medseg.io.dicom.discover_series`).
Its slices must also agree on

* FrameOfReferenceUID: positions in two frames of reference are in two coordinate systems, so sorting and spacing
  them together is meaningless (highdicom's legacy conversion refuses such instances as well; SimpleITK and dcm2niix
  merge them). medseg's own DICOM-SEG/RTSTRUCT export refused the series as a reference while ``convert`` and
  ``predict`` read it;
* Modality (a series-level attribute; dcm2niix splits a slice of another modality off);
* whether a rescale is given, and its RescaleType: a slice without RescaleSlope/Intercept among slices with one is
  read with slope 1 and intercept 0, so a CT slice lacking its -1024 reads air as water (every reader does this);
* SOPInstanceUID: one per file. Two files with one UID cannot both be referenced (a segmentation exported on the
  volume would point both slices at one of them; the export's reference reader refuses them).

Per-slice RescaleSlope/Intercept values, window settings and PhotometricInterpretation may differ: each slice's own
values are applied, and MONOCHROME1 is a display inversion (see :mod:`medseg.io.dicom`).
"""

from __future__ import annotations

from collections import Counter

from medseg.io.dicom_headers import Frame


def _odd_one(frames: list[Frame], key, what: str) -> str | None:
    """'slices differ in <what> (...)' when ``key(frame)`` takes several values; names a file of the rarest value."""
    counts = Counter(key(f) for f in frames)
    if len(counts) < 2:
        return None
    rare = min(counts, key=lambda v: (counts[v], str(v)))
    example = next(f.path for f in frames if key(f) == rare)
    values = ", ".join(f"{v or '(empty)'} in {n}" for v, n in counts.most_common())
    return f"slices differ in {what} ({values} slice(s); e.g. {example})"


def inconsistency(frames: list[Frame]) -> str | None:
    """Why the slices of one stack cannot form one volume although their geometry may (``None`` when they can).

    Parameters
    ----------
    frames : list of Frame
        The slices of one stack (any order).

    Returns
    -------
    str or None
        The first disagreement found, naming a file that holds it.

    Examples
    --------
    >>> from types import SimpleNamespace as F
    >>> frames = [F(path=f"IM{k}", frame_of_reference_uid="1.2" if k < 3 else "1.3", modality="CT", has_rescale=True,
    ...             rescale_type="", sop_uid=f"9.{k}") for k in range(4)]
    >>> inconsistency(frames)
    'slices differ in FrameOfReferenceUID (1.2 in 3, 1.3 in 1 slice(s); e.g. IM3): their positions are not in one...'
    >>> inconsistency(frames[:3]) is None
    True
    """
    problem = _odd_one(frames, lambda f: f.frame_of_reference_uid, "FrameOfReferenceUID")
    if problem:
        return problem + ": their positions are not in one coordinate system"
    problem = _odd_one(frames, lambda f: f.modality.upper(), "Modality")
    if problem:
        return problem
    problem = _odd_one(frames, lambda f: "given" if f.has_rescale else "absent", "RescaleSlope/RescaleIntercept")
    if problem:
        return problem + ": slices without one would be read with slope 1 and intercept 0"
    typed = [f for f in frames if f.rescale_type]
    problem = _odd_one(typed, lambda f: f.rescale_type, "RescaleType")
    if problem:
        return problem + ": their values are in different units"
    return _shared_sop_uid(frames)


def _shared_sop_uid(frames: list[Frame]) -> str | None:
    """Several files holding one SOPInstanceUID (the frames of one multi-frame file share their file's UID)."""
    files: dict[str, list] = {}
    for f in frames:
        if f.sop_uid and f.path not in files.setdefault(f.sop_uid, []):
            files[f.sop_uid].append(f.path)
    shared = {uid: paths for uid, paths in files.items() if len(paths) > 1}
    if not shared:
        return None
    uid, paths = next(iter(shared.items()))
    return (f"{sum(len(p) for p in shared.values())} files share {len(shared)} SOPInstanceUID(s) (e.g. {uid} in "
            f"{paths[0]} and {paths[1]}): each slice needs its own to be referenced")
