"""A small CT series written with pydicom, for tests that need a DICOM reference with exact geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ct_series(folder: Path, slices, positions, iop=(1, 0, 0, 0, 1, 0), pixel_spacing=(1.0, 1.0),
                    thickness: float = 2.0, study: str | None = None, frame: str | None = None,
                    series_number: int = 1, intercept: float = 0.0, patient=("Audit^Test", "A1")) -> list:
    """Write one CT slice per entry of ``slices`` (int16 ``(rows, columns)`` arrays) at the LPS ``positions``.

    ``pixel_spacing`` is DICOM's (between rows, between columns); ``iop`` its row and column cosines. Returns the
    datasets in the order given (their files are ``folder/000.dcm``, ``001.dcm``, ...).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = study or generate_uid(), generate_uid(), frame or generate_uid()
    out = []
    for k, (pixels, pos) in enumerate(zip(slices, positions)):
        pixels = np.asarray(pixels, np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "CT", *patient, "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = series_number, k + 1, "audit"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing, ds.SliceThickness = [str(v) for v in pixel_spacing], f"{thickness:g}"
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.ImageType = "1", f"{intercept:g}", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = pixels.tobytes()
        ds.save_as(str(folder / f"{k:03d}.dcm"), enforce_file_format=True)
        out.append(ds)
    return out
