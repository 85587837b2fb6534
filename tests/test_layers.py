"""The package's layers point one way (docs/architecture.md), read from the source with ast.

Every import of ``xsam`` code in ``src/xsam`` — at module level or inside a function — is
resolved to the module it names, and checked against two rules:

1. A subpackage imports only from lower layers (``RANK``): the support modules (checks, data,
   models, norm_stats, distributed) at the bottom, then optim, then analysis and integrations
   (which do not import each other), then train, then the package root and ``__main__``. Names taken
   from the root package (``from .. import SAM``) count as the layer that defines them
   (``xsam._WHERE``); ``__version__`` is free to all.
2. No private name crosses a subpackage: ``from ..optim._core import x`` or
   ``from ..optim import _x`` from outside optim.

``KNOWN`` lists the violations that remain, each with the reason and what removes it; an
entry that no longer occurs fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "xsam"

RANK = {
    "checks": 0,
    "data": 0,
    "models": 0,
    "norm_stats": 0,
    "policies": 1,  # the old name of norm_stats, re-exporting it: above it
    "distributed": 0,
    "optim": 1,
    "analysis": 2,
    "integrations": 2,
    "train": 3,
    "<root>": 4,
    "__main__": 4,
}
"""The layer of each top-level module or subpackage of xsam: imports go to a lower number."""

KNOWN = {
    ("xsam.analysis", "xsam.train.probe"): (
        "compatibility: xsam.analysis.checkpoint_paths / probe_run, imported from "
        "xsam.train.probe on first use (PEP 562), so importing xsam.analysis imports no train"
    ),
}
"""(importing module, imported module or name) -> why it is still allowed."""


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "xsam.train.cli"
    target: str  # the imported module, or module.name for a name
    line: int

    def __str__(self) -> str:
        path = self.source.replace(".", "/")
        return f"{path}:{self.line} imports {self.target}"


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _imports_of(path: Path) -> list[Import]:
    source, is_package = _module_name(path)
    package = source if is_package else source.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(source, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found += [Import(source, f"{module}.{a.name}", node.lineno) for a in node.names]
    return [i for i in found if i.target == "xsam" or i.target.startswith("xsam.")]


def _root_names() -> dict[str, str]:
    """``xsam._WHERE``: the root package's public names and the module defining each."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "_WHERE" for t in targets):
            return ast.literal_eval(node.value)
    return {}


def _layer(dotted: str, root_names: dict[str, str]) -> str:
    parts = dotted.split(".")
    if len(parts) == 1:
        return "<root>"
    if len(parts) == 2 and parts[1] in root_names:  # from xsam import SAM
        return root_names[parts[1]]
    return parts[1]


def _private_crossing(imp: Import) -> bool:
    own = imp.source.split(".")[:2]
    parts = imp.target.split(".")
    if parts[:2] == own:
        return False
    return any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts)


def all_imports() -> list[Import]:
    return [i for p in sorted(PACKAGE.rglob("*.py")) for i in _imports_of(p)]


def violations() -> list[tuple[Import, str]]:
    root_names = _root_names()
    out = []
    for imp in all_imports():
        if imp.target == "xsam.__version__":
            continue
        src, dst = _layer(imp.source, root_names), _layer(imp.target, root_names)
        if src not in RANK or dst not in RANK:
            unknown = src if src not in RANK else dst
            out.append((imp, f"xsam.{unknown} has no layer: give it one in RANK"))
        elif src != dst and RANK[dst] >= RANK[src]:
            out.append((imp, f"{src} (layer {RANK[src]}) imports {dst} (layer {RANK[dst]})"))
        if _private_crossing(imp):
            out.append((imp, "a private name from another subpackage"))
    return out


def _known(imp: Import) -> bool:
    return (imp.source, imp.target) in KNOWN


def test_imports_point_down_and_no_private_name_crosses_a_subpackage():
    found = [f"{imp}: {why}" for imp, why in violations() if not _known(imp)]
    assert not found, "layer rule broken (docs/architecture.md):\n" + "\n".join(found)


def test_every_known_violation_still_occurs():
    """An entry that was fixed is taken off the list (the list only shrinks)."""
    occurring = {(imp.source, imp.target) for imp, _ in violations()}
    stale = [f"{s} -> {t}" for s, t in KNOWN if (s, t) not in occurring]
    assert not stale, "fixed: remove from KNOWN in tests/test_layers.py: " + ", ".join(stale)


def test_the_reader_sees_the_real_imports():
    """The ast reader finds imports at module level and inside functions, relative and
    absolute, and resolves names to modules (a check that the checks above see anything)."""
    found = {(i.source, i.target) for i in all_imports()}
    assert ("xsam.train.cli", "xsam.train.probe.probe_run") in found  # inside a function
    assert ("xsam.__main__", "xsam.train.cli.main") in found
    assert ("xsam.integrations.transformers", "xsam.optim") in found  # from .. import optim
    assert ("xsam.optim.xsam", "xsam.optim._update._as_tensor") in found  # private, same package
    assert not _private_crossing(Import("xsam.optim.xsam", "xsam.optim._update._as_tensor", 1))
    assert _private_crossing(Import("xsam.train.x", "xsam.optim._core.f", 1))
    assert _private_crossing(Import("xsam.train.x", "xsam.optim._args", 1))
    assert not _private_crossing(Import("xsam.train.x", "xsam.__version__", 1))
    assert _layer("xsam.SAM", {"SAM": "optim"}) == "optim"


@pytest.mark.parametrize(
    "package, forbidden",
    [("xsam.optim", ("analysis", "train", "integrations")), ("xsam.analysis", ("train",))],
)
def test_importing_a_lower_layer_loads_no_higher_one(package, forbidden):
    code = (
        f"import sys, {package}; "
        "print(' '.join(sorted({m.split('.')[1] for m in sys.modules if m.count('.') >= 1 "
        "and m.startswith('xsam.')})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert not set(out) & set(forbidden), (
        f"import {package} loaded {sorted(set(out) & set(forbidden))}"
    )
