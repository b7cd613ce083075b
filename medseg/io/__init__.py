"""Readers and writers; DICOM series discovery; the ``Image`` type."""

from medseg.io.image import Image, affine_from_geometry

__all__ = ["Image", "affine_from_geometry"]
