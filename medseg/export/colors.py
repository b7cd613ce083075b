"""Segment names, colours and SNOMED CT codes for the exports; colour-table files for viewers.

Codes come from pydicom's DICOM code dictionary (``pydicom.sr.codedict.codes.SCT``), never typed by
hand, so a code is always the standard's. A label name is matched after normalisation (lower case,
``_``/``-``/spaces dropped, a ``left``/``right`` prefix or suffix split off as the laterality
modifier), e.g. ``kidney_left``, ``Left Kidney`` and ``left-kidney`` all give Kidney + Left.

Documented fallback for names not in :data:`ORGANS`: category and type SCT 85756007 "Tissue"
(the structure is then identified by its segment label only), and a colour from a fixed 20-colour
palette chosen by the label value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medseg.io.labels import read_label_names  # noqa: F401  (label-name files: one reader, in medseg.io.labels)

# name -> (pydicom SCT keyword, category, RGB). Colours follow 3D Slicer's GenericAnatomyColors
# where an organ has one there (approximately), otherwise a distinct colour.
_ANAT, _ALTERED = "anatomy", "altered"
ORGANS: dict[str, tuple[str, str, tuple[int, int, int]]] = {
    "liver": ("Liver", _ANAT, (221, 130, 101)),
    "spleen": ("Spleen", _ANAT, (157, 108, 162)),
    "kidney": ("Kidney", _ANAT, (185, 102, 83)),
    "pancreas": ("Pancreas", _ANAT, (249, 180, 111)),
    "stomach": ("Stomach", _ANAT, (216, 132, 105)),
    "gallbladder": ("Gallbladder", _ANAT, (139, 150, 98)),
    "adrenalgland": ("AdrenalGland", _ANAT, (249, 186, 150)),
    "esophagus": ("Esophagus", _ANAT, (211, 171, 143)),
    "duodenum": ("Duodenum", _ANAT, (255, 253, 229)),
    "smallintestine": ("SmallIntestine", _ANAT, (205, 167, 142)),
    "smallbowel": ("SmallIntestine", _ANAT, (205, 167, 142)),
    "colon": ("Colon", _ANAT, (204, 168, 143)),
    "rectum": ("Rectum", _ANAT, (188, 124, 104)),
    "bladder": ("Bladder", _ANAT, (222, 154, 132)),
    "urinarybladder": ("Bladder", _ANAT, (222, 154, 132)),
    "prostate": ("Prostate", _ANAT, (230, 158, 140)),
    "uterus": ("Uterus", _ANAT, (219, 160, 137)),
    "heart": ("Heart", _ANAT, (206, 110, 84)),
    "leftatrium": ("LeftAtrium", _ANAT, (208, 122, 101)),
    "rightatrium": ("RightAtrium", _ANAT, (219, 142, 114)),
    "leftventricle": ("LeftVentricle", _ANAT, (196, 90, 79)),
    "rightventricle": ("RightVentricle", _ANAT, (215, 120, 100)),
    "pericardium": ("Pericardium", _ANAT, (255, 225, 200)),
    "lung": ("Lung", _ANAT, (197, 165, 145)),
    "trachea": ("Trachea", _ANAT, (182, 228, 255)),
    "larynx": ("Larynx", _ANAT, (150, 208, 243)),
    "thyroid": ("Thyroid", _ANAT, (220, 245, 20)),
    "thyroidgland": ("Thyroid", _ANAT, (220, 245, 20)),
    "aorta": ("Aorta", _ANAT, (224, 97, 76)),
    "inferiorvenacava": ("InferiorVenaCava", _ANAT, (0, 151, 206)),
    "ivc": ("InferiorVenaCava", _ANAT, (0, 151, 206)),
    "portalvein": ("PortalVein", _ANAT, (0, 122, 171)),
    "pulmonaryartery": ("PulmonaryArtery", _ANAT, (0, 122, 171)),
    "artery": ("Artery", _ANAT, (216, 101, 79)),
    "vein": ("Vein", _ANAT, (0, 151, 206)),
    "brain": ("Brain", _ANAT, (250, 250, 225)),
    "brainstem": ("BrainStem", _ANAT, (185, 232, 61)),
    "cerebellum": ("Cerebellum", _ANAT, (236, 209, 189)),
    "hippocampus": ("Hippocampus", _ANAT, (220, 216, 20)),
    "spinalcord": ("SpinalCord", _ANAT, (244, 214, 49)),
    "opticnerve": ("OpticNerve", _ANAT, (240, 150, 0)),
    "eye": ("Eye", _ANAT, (194, 255, 194)),
    "parotid": ("ParotidGland", _ANAT, (220, 176, 100)),
    "parotidgland": ("ParotidGland", _ANAT, (220, 176, 100)),
    "mandible": ("Mandible", _ANAT, (222, 198, 101)),
    "skull": ("Skull", _ANAT, (241, 213, 144)),
    "bone": ("Bone", _ANAT, (241, 214, 145)),
    "spine": ("Spine", _ANAT, (241, 214, 145)),
    "vertebra": ("Vertebra", _ANAT, (241, 214, 145)),
    "rib": ("Rib", _ANAT, (253, 232, 158)),
    "sacrum": ("Sacrum", _ANAT, (212, 188, 102)),
    "femur": ("Femur", _ANAT, (255, 238, 170)),
    "humerus": ("Humerus", _ANAT, (226, 202, 134)),
    "scapula": ("Scapula", _ANAT, (212, 188, 102)),
    "clavicle": ("Clavicle", _ANAT, (205, 179, 108)),
    "muscle": ("Muscle", _ANAT, (192, 104, 88)),
    "head": ("Head", _ANAT, (177, 122, 101)),
    "body": ("EntireBody", _ANAT, (177, 122, 101)),
    "external": ("EntireBody", _ANAT, (177, 122, 101)),
    "fat": ("Fat", _ANAT, (230, 220, 70)),
    "skin": ("Skin", _ANAT, (177, 122, 101)),
    "tumor": ("Tumor", _ALTERED, (144, 238, 144)),
    "tumour": ("Tumor", _ALTERED, (144, 238, 144)),
    "neoplasm": ("Neoplasm", _ALTERED, (144, 238, 144)),
    "lesion": ("Lesion", _ALTERED, (255, 160, 0)),
    "edema": ("Edema", _ALTERED, (128, 174, 128)),
    "oedema": ("Edema", _ALTERED, (128, 174, 128)),
    "necrosis": ("Necrosis", _ALTERED, (111, 184, 210)),
    "cyst": ("Cyst", _ALTERED, (100, 180, 255)),
    "nodule": ("Nodule", _ALTERED, (255, 120, 120)),
}

#: fallback colours (matplotlib's tab20), picked by label value
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229)]


@dataclass(frozen=True)
class SegmentInfo:
    """What a viewer shows for one label: name, colour and coded meaning.

    Attributes
    ----------
    value : int
        Label value in the label map.
    name : str
        Segment label / ROI name.
    color : (int, int, int)
        RGB, 0-255.
    category, type : pydicom.sr.coding.Code
        SNOMED CT segmented property category and type.
    laterality : pydicom.sr.coding.Code or None
        Left or Right modifier of ``type``.
    known : bool
        Whether ``name`` matched :data:`ORGANS` (else the "Tissue" fallback).

    Examples
    --------
    >>> info = segment_info(1, "Liver")
    >>> info.name, info.color, info.type.meaning, info.known
    ('Liver', (221, 130, 101), 'Liver', True)
    >>> segment_info(3, "thing").color  # not an organ: PALETTE[3 - 1]
    (44, 160, 44)
    """

    value: int
    name: str
    color: tuple[int, int, int]
    category: object  # pydicom Code
    type: object  # pydicom Code
    laterality: object | None = None  # pydicom Code (Left/Right) or None
    known: bool = False


def _normalise(name: str) -> tuple[str, str | None]:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for side in ("left", "right"):
        for cand in (key[len(side):] if key.startswith(side) else None, key[: -len(side)] if key.endswith(side) else None):
            if cand and cand in ORGANS:
                return cand, side
    if key.endswith("s") and key[:-1] in ORGANS:  # plural: kidneys, lungs
        return key[:-1], None
    return key, None


def segment_info(value: int, name: str | None = None) -> SegmentInfo:
    """Name, colour and SNOMED CT codes for label ``value`` called ``name``.

    Examples
    --------
    >>> info = segment_info(3, "kidney_left")
    >>> info.type.value, info.laterality.meaning, info.known
    ('64033007', 'Left', True)
    >>> segment_info(7, "thing").type.meaning
    'Tissue'
    """
    from pydicom.sr.codedict import codes

    name = str(name) if name else f"label_{value}"
    key, side = _normalise(name)
    if key in ORGANS:
        keyword, cat, rgb = ORGANS[key]
        category = codes.SCT.AnatomicalStructure if cat == _ANAT else codes.SCT.MorphologicallyAbnormalStructure
        lat = None if side is None else (codes.SCT.Left if side == "left" else codes.SCT.Right)
        return SegmentInfo(int(value), name, rgb, category, getattr(codes.SCT, keyword), lat, True)
    return SegmentInfo(int(value), name, PALETTE[(int(value) - 1) % len(PALETTE)], codes.SCT.Tissue, codes.SCT.Tissue)


def itksnap_label_text(infos: list[SegmentInfo]) -> str:
    """ITK-SNAP label description file (the format of its 'Export label descriptions').

    Parameters
    ----------
    infos : list of SegmentInfo

    Returns
    -------
    str
        The file's text: a header, the "Clear Label" line, then one line per segment.

    Examples
    --------
    >>> itksnap_label_text([segment_info(1, "liver")]).splitlines()[-1]  # value, R, G, B, A, visible, mesh
    '    1   221  130  101        1  1  1    "liver"'
    """
    lines = ["# ITK-SnAP Label Description File (written by medseg)",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             '    0     0    0    0        0  0  0    "Clear Label"']
    for s in infos:
        r, g, b = s.color
        label = re.sub(r"[\x00-\x1f\x7f]+", " ", s.name.replace('"', "'"))  # one quoted name per line
        lines.append(f"{s.value:5d} {r:5d} {g:4d} {b:4d} {1:8d} {1:2d} {1:2d}    \"{label}\"")
    return "\n".join(lines) + "\n"


def slicer_color_table_text(infos: list[SegmentInfo]) -> str:
    """3D Slicer colour table (``.ctbl``): ``value name R G B A`` per line (names without spaces).

    Parameters
    ----------
    infos : list of SegmentInfo

    Returns
    -------
    str
        The file's text: two comment lines, the background, then one line per segment.

    Examples
    --------
    >>> slicer_color_table_text([segment_info(1, "left kidney")]).splitlines()[-1]
    '1 left_kidney 185 102 83 255'
    """
    lines = ["# Color table file (written by medseg)", f"# {len(infos) + 1} values", "0 Background 0 0 0 0"]
    for s in infos:
        r, g, b = s.color
        name = re.sub(r"\s+", "_", s.name)
        lines.append(f"{s.value} {name} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"
