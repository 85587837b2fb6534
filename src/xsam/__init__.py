"""xsam: XSAM (eXplicit Sharpness-Aware Minimization) and the SAM family for PyTorch."""

from .optim import (
    DEFAULT_ALPHA_GRID,
    SAM,
    XSAM,
    PerturbationSchedule,
    SAMFamily,
    slerp_coefficients,
)
from .policies import frozen_norm_stats

__version__ = "0.1.0"

__all__ = [
    "SAM",
    "XSAM",
    "SAMFamily",
    "PerturbationSchedule",
    "DEFAULT_ALPHA_GRID",
    "slerp_coefficients",
    "frozen_norm_stats",
    "__version__",
]
