"""TrainConfig's table of fields: every field documented next to itself (its ``--help`` line in
its metadata, its docstring below it), the command line built from that metadata, a parser
derived from each field's type that round-trips its default, and presets that name only
existing fields. Structure only: the values themselves are covered by the train and CLI tests.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing

import pytest

from xsam.train import cli
from xsam.train import config as C

FIELDS = dataclasses.fields(C.TrainConfig)
HINTS = typing.get_type_hints(C.TrainConfig)


def _field_docstrings() -> dict[str, str]:
    """``{field: docstring}`` read from the class's source: the string right after a field."""
    (cls,) = ast.parse(inspect.getsource(C.TrainConfig)).body
    assert isinstance(cls, ast.ClassDef)
    docs: dict[str, str] = {}
    for stmt, nxt in zip(cls.body, cls.body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[stmt.target.id] = str(nxt.value.value)
    return docs


def test_every_field_has_a_help_line_and_a_docstring():
    docs = _field_docstrings()
    for f in FIELDS:
        text = f.metadata.get("help")
        assert isinstance(text, str) and text.strip() and "\n" not in text, f.name
        assert len(docs.get(f.name, "").split()) >= 4, f"{f.name} has no docstring"


def test_only_the_bool_fields_are_switches():
    for f in FIELDS:
        assert (f.metadata["metavar"] is None) == (HINTS[f.name] is bool), f.name


def _train_actions() -> dict[str, object]:
    parser = cli.build_parser()
    (sub,) = (a for a in parser._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["train"]._actions}


def test_the_run_settings_flags_are_the_fields_metadata():
    actions = _train_actions()
    flagged = [f for f in FIELDS if f.metadata["flag"]]
    assert {f.name for f in FIELDS} - {f.name for f in flagged} == {"out", "preset"}
    assert list(C.FLAG_HELP) == [f.name for f in flagged]
    for f in flagged:
        action = actions[f.name]
        assert action.help == f.metadata["help"], f.name
        assert action.option_strings[0] == "--" + f.name.replace("_", "-")
        if f.metadata["metavar"] is not None:
            assert action.metavar == f.metadata["metavar"], f.name
