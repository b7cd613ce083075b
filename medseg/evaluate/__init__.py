"""Evaluation: overlap, surface and instance metrics; reports."""
