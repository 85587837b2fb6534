"""`xsam --help` and argument errors answer without importing torch; the command line's copies
of the dataset, model and noise names equal the packages' own."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs the command line in a fresh interpreter, then reports whether torch was imported.
_PROBE = """
import runpy, sys
sys.argv = ["xsam", *sys.argv[1:]]
try:
    runpy.run_module("xsam", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        ([], 2),
        (["train", "--help"], 0),
        (["compare", "--help"], 0),
        (["tune", "--help"], 0),
        (["demo", "--help"], 0),
        (["probe", "--help"], 0),
        (["train", "--no-such-flag"], 2),
        (["train", "--lr", "fast"], 2),
        (["train", "--resume", "--force"], 2),
        (["probe"], 2),
        (["no-such-command"], 2),
    ],
)
def test_help_and_argument_errors_do_not_import_torch(argv, code):
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    *_, last = r.stderr.strip().splitlines()
    assert last == f"NO-TORCH {code}", r.stderr
    if code == 0:
        assert r.stdout.startswith("usage: xsam")
    else:
        assert "xsam: error:" in r.stderr or "usage: xsam" in r.stderr


def test_import_xsam_is_lazy_but_complete():
    """``import xsam`` does not import torch; every public name still resolves (and then
    torch is loaded)."""
    code = (
        "import sys, xsam, xsam.train\n"
        "assert 'torch' not in sys.modules\n"
        "names = [getattr(xsam, n) for n in xsam.__all__]\n"
        "names += [getattr(xsam.train, n) for n in xsam.train.__all__]\n"
        "from xsam import SAM, XSAM\n"
        "from xsam.train.cli import demo_plan\n"
        "assert xsam.optim.SAM is xsam.SAM and callable(xsam.train.cli.demo_plan)\n"
        "assert 'torch' in sys.modules and SAM.__module__.startswith('xsam.optim')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr


def test_cli_name_copies_equal_the_packages():
    from xsam.data import DATASETS, NOISE_TYPES
    from xsam.models import MODEL_NAMES
    from xsam.train import demo, names

    assert names.DATASET_NAMES == DATASETS
    assert names.NOISE_TYPES == NOISE_TYPES
    assert names.MODEL_NAMES == MODEL_NAMES
    assert demo.DEMO_PRESET == names.DEMO_PRESET


def test_unknown_attribute_is_an_attribute_error():
    import xsam
    import xsam.train

    for module in (xsam, xsam.train):
        with pytest.raises(AttributeError, match="no_such_name"):
            module.no_such_name  # noqa: B018
