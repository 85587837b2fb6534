"""SAM-family optimizers on one shared core."""

from ._core import SAMFamily
from .clip import DirectionNormClip, clip_direction_norm
from .sam import SAM
from .schedule import PerturbationSchedule
from .xsam import DEFAULT_ALPHA_GRID, XSAM, slerp_coefficients

__all__ = [
    "SAM",
    "XSAM",
    "SAMFamily",
    "PerturbationSchedule",
    "DEFAULT_ALPHA_GRID",
    "slerp_coefficients",
    "clip_direction_norm",
    "DirectionNormClip",
]
