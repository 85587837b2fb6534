"""``python -m xsam`` and the ``xsam`` console script: train, compare, demo, presets."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xsam`` command line; returns the exit status."""
    from .train.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
