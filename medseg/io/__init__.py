"""Readers and writers; DICOM series discovery; the ``Image`` type.

``read_image`` / ``read_volume`` / ``write_image`` for files and DICOM folders, ``discover_series`` /
``load_series`` / ``SeriesInfo`` for DICOM studies, ``describe`` / ``convert`` behind ``medseg info`` and
``medseg convert``. Heavy libraries (pydicom, SimpleITK, nibabel) are imported when first needed.
"""

from medseg.io.convert import convert, describe
from medseg.io.dicom import SeriesInfo, discover_series, load_series
from medseg.io.image import Image, affine_from_geometry
from medseg.io.readers import read_image, read_volume
from medseg.io.writers import write_image

__all__ = ["Image", "SeriesInfo", "affine_from_geometry", "convert", "describe", "discover_series", "load_series",
           "read_image", "read_volume", "write_image"]
