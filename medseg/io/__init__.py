"""Readers and writers; DICOM series discovery; the ``Image`` type."""

from medseg.io.image import Image, affine_from_geometry
from medseg.io.readers import read_image, write_image

__all__ = ["Image", "affine_from_geometry", "read_image", "write_image"]
