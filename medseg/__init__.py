"""medseg: medical volumetric segmentation with exact geometry.

Pipeline stages are sub-packages: ``io`` -> ``plan`` -> ``train`` -> ``infer`` ->
``postprocess`` -> ``evaluate`` -> ``export``, with ``cells`` beside them.
"""

__version__ = "0.1.0"

from medseg.errors import MedsegError, InputError  # noqa: E402

__all__ = ["__version__", "MedsegError", "InputError"]
