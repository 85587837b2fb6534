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


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_parser_round_trips_its_default(f):
    assert C.parse_field(f.name, str(f.default)) == f.default
    assert C.parse_field(f.name, f.default) == f.default  # a JSON value as is


def _kind(hint):
    """``(kind, optional)`` of an annotation ``kind`` or ``kind | None``."""
    args = typing.get_args(hint)
    if len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


@pytest.mark.parametrize(
    "f", [f for f in FIELDS if f.metadata["parse"] is None], ids=lambda f: f.name
)
def test_a_parser_follows_the_annotation(f):
    kind, optional = _kind(HINTS[f.name])
    text = {str: "cuda:1", int: "7", float: "2.5", bool: "yes"}[kind]
    want = {str: "cuda:1", int: 7, float: 2.5, bool: True}[kind]
    got = C.parse_field(f.name, text)
    assert got == want and type(got) is kind
    if optional:
        for none in ("none", " NULL ", None):
            assert C.parse_field(f.name, none) is None
    elif kind is str:
        assert C.parse_field(f.name, "none") == "none"
    else:
        with pytest.raises(C.ConfigError, match=f"^{f.name}: expected "):
            C.parse_field(f.name, "none")


def test_the_declared_parsers_are_the_special_ones():
    declared = {f.name for f in FIELDS if f.metadata["parse"] is not None}
    assert declared == {"alpha", "alpha_grid", "alpha_every"}
    assert C.parse_field("alpha_grid", "0:0.2:0.1") == [0.0, 0.1, 0.2]
    assert C.parse_field("alpha_every", "epoch") is None
    assert C.parse_field("alpha", " Auto") == "auto"


def test_an_annotation_without_a_parser_must_declare_one():
    with pytest.raises(TypeError, match="TrainConfig.grid: no parser for list"):
        C._type_parser("grid", list[int])
    with pytest.raises(TypeError, match="no parser"):
        C._type_parser("either", int | str)


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_a_preset_names_only_fields_and_validates(name):
    values = C.PRESETS[name]
    assert set(values) <= set(C.FIELD_NAMES)
    assert values["preset"] == name and C.PRESET_NOTES[name].strip()
    config = C.resolve_config(name)
    assert {k: getattr(config, k) for k in values} == values  # its values are read as given
    config.validated()


def test_presets_and_notes_agree_and_the_defaults_are_fmnist_sample_cnn():
    assert list(C.PRESETS) == list(C.PRESET_NOTES)
    assert C.TrainConfig().validated() == C.resolve_config("fmnist-sample-cnn").validated().replace(
        preset=None
    )
