"""Targets, optimizer settings and variant names shared by every section of the benchmark."""

from __future__ import annotations

TARGET_UPDATE_RATIO = 1.03  # XSAM / SAM per update, k = 1
TARGET_EPOCH_RATIO = 1.03  # XSAM / SAM over an epoch with one α search
TARGET_SPEEDUP = 3.0  # plain per-tensor loop / xsam, optimizer-only work
TARGET_EXTRA_BUFFERS = 1.0  # steady-state extra memory, in parameter-sized buffers

TARGETS = {
    "update_ratio_max": TARGET_UPDATE_RATIO,
    "epoch_ratio_max": TARGET_EPOCH_RATIO,
    "optimizer_only_speedup_min": TARGET_SPEEDUP,
    "extra_buffers_max": TARGET_EXTRA_BUFFERS,
}

RHO = 0.15
FIXED_ALPHA = 0.5
BASE_KW = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}

# whole-update variants (section 1), in table order
UPDATE_VARIANTS = {
    "sgd": "SGD (1 pass)",
    "sam": "SAM k=1",
    "sam_b": "SAM k=1, 2nd instance (control)",
    "xsam_fixed": f"XSAM k=1, α={FIXED_ALPHA}",
    "xsam_auto": "XSAM k=1, auto (no search)",
    "xsam_search": "XSAM k=1, auto, search update",
}

# optimizers of the memory section, in table order, with their names in the report
MEMORY_OPTIMIZERS = {
    "sgd": "SGD alone (momentum)",
    "sam": "xsam.SAM",
    "xsam": f"xsam.XSAM α={FIXED_ALPHA}",
    "xsam_search": "xsam.XSAM auto, search update",
    "plain": "PlainXSAM (per-tensor loop)",
}
