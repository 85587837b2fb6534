"""The configuration of one training run: a dataclass, its validation and JSON.

A run is fully described by a :class:`TrainConfig`; ``config.json`` in the run folder is its
:meth:`~TrainConfig.to_dict`. Presets (:mod:`xsam.train.presets`) are named partial configs
applied over the defaults; explicit values (command-line flags, a JSON file) are applied over
the preset (:func:`resolve_config`). The field values' parsers and checks live in
:mod:`xsam.train.config_values`; every name is importable from here as before.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# torch-free: `xsam --help` and argument errors read this module without importing torch
from .. import checks
from .config_values import (
    AUGMENT_ALIASES,
    ConfigError,
    _choice,
    _config_error,
    _dataset_key,
    _device,
    _int,
    _number,
    _optional,
    _type_parser,
    parse_alpha,
    parse_alpha_every,
    parse_alpha_grid,
    parse_augment,
)
from .names import DATASET_NAMES as DATASETS
from .names import MODEL_NAMES, NOISE_TYPES
from .presets import PAPER_ALPHA_GRID, PRESET_NOTES, PRESETS

if TYPE_CHECKING:
    from ..data import Augment

__all__ = [
    "AMP_MODES",
    "AUGMENT_ALIASES",
    "BASE_OPTIMIZERS",
    "ConfigError",
    "OPTIMIZERS",
    "PAPER_ALPHA_GRID",
    "PRESETS",
    "PRESET_NOTES",
    "RESUME_FREE_KEYS",
    "SAM_FAMILY_FIELDS",
    "SCHEDULES",
    "SGD_BASE_FIELDS",
    "TrainConfig",
    "WEIGHT_DECAY_ON",
    "XSAM_FIELDS",
    "apply_overrides",
    "parse_alpha",
    "parse_alpha_every",
    "parse_alpha_grid",
    "parse_augment",
    "parse_field",
    "resolve_config",
    "resume_diff",
    "unused_fields",
]

OPTIMIZERS = ("sgd", "sam", "xsam")
"""``sgd``: the base optimizer alone; ``sam``: (k-step, optionally adaptive) SAM; ``xsam``."""
BASE_OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
WEIGHT_DECAY_ON = ("all", "matrices")
AMP_MODES = ("off", "bf16", "fp16")
RESUME_FREE_KEYS = frozenset(
    {"out", "device", "threads", "data_dir", "preset", "keep_checkpoints", "checkpoint_every"}
)
"""Config fields a resumed run may change: they do not change the results (on one device)."""


RESUME_HOW = (
    "; to continue, drop the changed flag(s) (--resume continues the saved config); to start a "
    "different run, pass another --out (--force deletes this run and starts over)"
)
"""What a refused resume suggests: the safe way first, the destructive one last."""


def _setting(
    default: Any,
    metavar: str | None,
    help: str,
    *,
    parse: Callable[[object], Any] | None = None,
    flag: bool = True,
) -> Any:
    """A :class:`TrainConfig` field whose ``metadata`` holds its ``--help`` line (``help``),
    the flag's ``metavar`` (``None``: an on/off switch), whether the run-settings flags of
    ``xsam train`` / ``compare`` / ``tune`` offer it (``flag``) and the parser of its
    command-line and JSON values (``parse``; ``None``: the one its annotation gives, see
    :func:`parse_field`)."""
    meta = {"help": help, "metavar": metavar, "flag": flag, "parse": parse}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that determines a training run.

    The defaults are the ``fmnist-sample-cnn`` preset: a small CNN on the Fashion-MNIST sample
    embedded in the package, with the paper's optimizer hyperparameters (docs/algorithm.md §5).
    Each field's docstring says what it means, its unit, what ``None`` means where allowed and
    which optimizers or models use it; its ``metadata["help"]`` is its line in ``xsam train
    --help``. A field is set on the command line as ``--name-with-dashes`` or in ``key=value``
    form (:func:`parse_field`).

    A setting the optimizer or model does not use (:func:`unused_fields`: the SAM family's with
    ``sgd``, XSAM's with ``sam``, momentum and nesterov with ``adamw``, width and depth with
    models that have none) is accepted and ignored; :meth:`validated` checks only its type.
    """

    # ------------------------------------------------------------------ data
    dataset: str = _setting("fashion-mnist-sample", "NAME", f"data set: {', '.join(DATASETS)}")
    """The data set, one of :data:`xsam.data.DATASETS` (spellings like ``cifar-10``, ``fmnist``
    or ``tinyimagenet`` are accepted). Default: the 10k/2k Fashion-MNIST sample shipped in the
    package, which needs no download."""
    data_dir: str | None = _setting(
        None, "DIR", "folder holding the data set's files (default: $XSAM_DATA, system dirs)"
    )
    """The folder holding the data set's files; ``None``: ``$XSAM_DATA``, then the system
    locations. Not read for the embedded sample."""
    limit_train: int | None = _setting(
        None, "N", "train on N examples only (a fixed class-balanced subset)"
    )
    """Train on N examples only: the first N of a class-balanced random subset that is fixed
    (independent of ``seed``), for tiny runs; applied after ``val_size`` is held out. ``None``:
    every training example."""
    limit_test: int | None = _setting(
        None, "N", "evaluate on N test examples only (a fixed class-balanced subset)"
    )
    """Evaluate on N test examples only (a fixed class-balanced subset, as ``limit_train``);
    ``None``: the whole test set."""
    val_size: int | None = _setting(
        None, "N", "hold out N training examples as a validation set (val acc each epoch)"
    )
    """Hold out N training examples (a fixed class-balanced subset, the same for every seed) as
    a validation set: never trained on, evaluated after every epoch (``val_loss``,
    ``val_acc``), for choosing hyper-parameters without the test set; taken before
    ``limit_train`` applies. ``None``: no validation set."""
    augment: str = _setting(
        "crop2+flip", "SPEC", "none, paper (= crop4+flip+cutout16@0.5) or e.g. crop2+flip"
    )
    """Training augmentation, applied per batch: ``"none"``, ``"paper"`` (=
    ``crop4+flip+cutout16@0.5``) or ``+``-joined parts ``cropP`` (random crop after P pixels
    of zero padding), ``flip`` (horizontal, with probability 1/2), ``cutoutS`` or
    ``cutoutS@p`` (an S×S Cutout applied with probability p, default 1); read by
    :func:`parse_augment`."""
    label_noise: float = _setting(
        0.0, "P", "fraction of training and validation labels flipped (never test)"
    )
    """The fraction in [0, 1) of training and validation labels replaced by a wrong class
    (never the test labels); 0: clean labels."""
    noise_type: str = _setting(
        "symmetric", "KIND", "label noise: symmetric (other classes uniformly) or pair (c → c+1)"
    )
    """How a noisy label is drawn: ``symmetric`` (uniformly among the other classes) or
    ``pair`` (class c becomes c + 1)."""
    noise_seed: int = _setting(
        0, "S", "seed of the label noise (the same for every method and run seed)"
    )
    """The label noise's own seed (:func:`xsam.data.noisy_labels`), >= 0, independent of
    ``seed``, so that every method and every run seed sees the same noisy labels."""

    # ------------------------------------------------------------------ model
    model: str = _setting("small_cnn", "NAME", f"model: {', '.join(MODEL_NAMES)}")
    """The model, one of :data:`xsam.models.MODEL_NAMES`."""
    width: int | None = _setting(
        None, "W", "[mlp, plain_cnn, vit] hidden width (default 1024 / 512 / 96)"
    )
    """The hidden width of ``mlp``, ``plain_cnn`` and ``vit`` (``None``: 1024, 512, 96); other
    models ignore it."""
    depth: int | None = _setting(None, "D", "[mlp, vit] hidden layers / blocks (default 2 / 4)")
    """The hidden layers of ``mlp`` or transformer blocks of ``vit`` (``None``: 2, 4); other
    models ignore it."""

    # ------------------------------------------------------------------ optimizer
    optimizer: str = _setting(
        "xsam", "NAME", f"{', '.join(OPTIMIZERS)} (sgd = the base optimizer alone)"
    )
    """``sgd`` (the base optimizer alone), ``sam`` ((k-step, optionally adaptive) SAM) or
    ``xsam``."""
    rho: float = _setting(0.15, "R", "[sam, xsam] ascent radius ρ")
    """ρ >= 0, the total length of the ascent path (Euclidean, in parameter units; in ASAM's
    rescaled coordinates with ``adaptive``). ``sam`` and ``xsam``; 0.15 is the paper's."""
    steps: int = _setting(1, "K", "[sam, xsam] ascent steps k")
    """k >= 1, the number of ascent steps (gradient passes before the one the descent uses).
    ``sam`` and ``xsam``."""
    adaptive: bool = _setting(False, None, "[sam, xsam] ASAM's adaptive perturbation")
    """Measure the ascent in ASAM's rescaled coordinates θ/(|θ| + η). ``sam`` and ``xsam``."""
    eta: float = _setting(0.01, "E", "[sam, xsam] η of the adaptive perturbation")
    """η >= 0 of the adaptive scaling |θ| + η (``xsam`` with ``adaptive`` needs η > 0). ``sam``
    and ``xsam``; without ``adaptive`` it is not used."""
    alpha: float | str = _setting(
        "auto", "A", "[xsam] α: auto (searched) or a number (1 = SAM)", parse=parse_alpha
    )
    """XSAM's α: ``"auto"`` (chosen by a search over ``alpha_grid`` at radius ``rho_max``) or a
    fixed finite number (1: k-step SAM). ``xsam`` only."""
    rho_max: float | None = _setting(
        None, "R", "[xsam] radius of the α search probes (default 2·ρ)"
    )
    """The radius at which the α search probes the loss, > 0 when ρ > 0; ``None``: 2·``rho``,
    resolved by :meth:`validated` so that ``config.json`` shows the value used. ``xsam``
    only."""
    alpha_grid: list[float] | None = _setting(
        None,
        "GRID",
        "[xsam] α values searched: start:stop:step or a,b,c (default 0:2:0.1)",
        parse=_optional(parse_alpha_grid),
    )
    """The α values searched, sorted without repeats: a list, ``"a,b,c"`` or
    ``"start:stop:step"`` (stop included); ``None``: :data:`PAPER_ALPHA_GRID` (0 to 2 in steps
    of 0.1). ``xsam`` with ``alpha="auto"`` only (:meth:`validated` sets it to ``None`` for a
    fixed α)."""
    alpha_every: int | None = _setting(
        None,
        "N",
        "[xsam] search α every N updates, or 'epoch' (default: each epoch start)",
        parse=parse_alpha_every,
    )
    """Search α every N >= 1 updates; ``None`` (``"epoch"`` on the command line): at the first
    update of every epoch, as the paper. ``xsam`` with ``alpha="auto"`` only."""
    perturbation: str = _setting(
        "local", "MODE", "[sam, xsam] under torchrun: local (per-rank ascent, default), global"
    )
    """Under torchrun (several processes): ``local`` (each process ascends from its own
    batch's gradient) or ``global`` (from the gradient of the global batch); one process: no
    difference. ``sam`` and ``xsam``."""
    perturb_every: int = _setting(
        1, "N", "[sam, xsam] a full update every N-th step, cheap steps between"
    )
    """The perturbation schedule (:class:`xsam.PerturbationSchedule`): a full update every
    N-th step (N >= 1), cheap steps between; 1: every update is full. ``sam`` and ``xsam``."""
    perturb_start: float = _setting(
        0.0, "F", "[sam, xsam] cheap steps for the first fraction F of the run"
    )
    """The fraction in [0, 1] of the run's updates done as cheap steps before the schedule's
    full updates begin; 0: from the first update. ``sam`` and ``xsam``."""
    perturb_prob: float = _setting(
        1.0, "P", "[sam, xsam] each scheduled step is full with probability P"
    )
    """The probability in [0, 1] that a step the schedule makes full is full (the draws seeded
    by ``seed``); 1: always. ``sam`` and ``xsam``."""
    perturb_reuse: float = _setting(
        0.0, "L", "[sam, xsam] LookSAM reuse λ on cheap steps (0 = plain steps)"
    )
    """LookSAM's reuse weight λ >= 0 on the cheap steps (the last full update's sharpness
    direction added to the gradient); 0: plain base-optimizer steps. ``sam`` and ``xsam``."""
    base: str = _setting("sgd", "NAME", f"base optimizer: {', '.join(BASE_OPTIMIZERS)}")
    """The base optimizer that takes every step: ``sgd`` or ``adamw``. Every optimizer."""
    lr: float = _setting(0.05, "LR", "peak learning rate")
    """The peak learning rate, > 0: reached after ``warmup_epochs``, then following
    ``schedule``. Every optimizer."""
    momentum: float = _setting(0.9, "M", "[base sgd] momentum")
    """SGD's momentum, in [0, 1). ``base="sgd"`` only."""
    weight_decay: float = _setting(1e-3, "WD", "weight decay (SGD: coupled, AdamW: decoupled)")
    """The weight decay, >= 0: coupled (added to the gradient) with SGD, decoupled with AdamW;
    on the parameters ``weight_decay_on`` names. Every optimizer."""
    nesterov: bool = _setting(False, None, "[base sgd] Nesterov momentum")
    """Nesterov momentum (needs ``momentum`` > 0). ``base="sgd"`` only."""
    weight_decay_on: str = _setting(
        "all", "WHICH", "all parameters, or matrices (no decay on biases, norms, tokens)"
    )
    """``all`` (every parameter) or ``matrices`` (parameters of two or more dimensions only,
    less those the model's ``no_weight_decay()`` names, e.g. a ViT's class token and position
    embedding: biases and norm weights are not decayed; :func:`xsam.models.vit.decay_groups`).
    """

    # ------------------------------------------------------------------ schedule
    epochs: int = _setting(10, "N", "epochs")
    """The length of the run in epochs, >= 1."""
    batch_size: int = _setting(125, "B", "batch size")
    """Training examples per update, >= 1 (under torchrun the global batch, split evenly over
    the processes)."""
    schedule: str = _setting(
        "cosine", "NAME", f"learning-rate schedule per update: {', '.join(SCHEDULES)}"
    )
    """The learning rate after warm-up, set every update: ``cosine`` (to 0 at the end of the
    run) or ``constant``."""
    warmup_epochs: float = _setting(0.0, "E", "linear warm-up length in epochs (may be fractional)")
    """The linear warm-up of the learning rate, in epochs (may be fractional), at most
    ``epochs``; 0: none."""
    label_smoothing: float = _setting(0.0, "S", "label smoothing of the training loss")
    """The label smoothing, in [0, 1), of the training loss (cross-entropy)."""

    # ------------------------------------------------------------------ run
    seed: int = _setting(0, "S", "seed of model init, data order and augmentation")
    """The run's seed, >= 0: the model's initial weights, the data order, the augmentation and
    the perturbation schedule's draws (not the label noise: ``noise_seed``)."""
    device: str = _setting("auto", "DEV", "auto (CUDA when present), cpu, cuda or cuda:N")
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int | None = _setting(None, "N", "CPU threads for torch (default: torch's choice)")
    """The CPU threads torch uses, >= 1; ``None``: torch's default."""
    amp: str = _setting(
        "off", "MODE", f"mixed precision: {', '.join(AMP_MODES)} (fp16 uses a GradScaler)"
    )
    """Mixed precision: ``off``, ``bf16`` (autocast) or ``fp16`` (autocast with a
    GradScaler)."""
    eval_batch_size: int = _setting(1000, "B", "batch size of the evaluation")
    """Examples per batch when evaluating, >= 1."""
    keep_checkpoints: bool = _setting(
        False, None, "also keep checkpoints/epochNNN.pt (weights) for `xsam probe`"
    )
    """Also keep the weights of every epoch (``checkpoints/epochNNN.pt``), for ``xsam
    probe``."""
    checkpoint_every: int | None = _setting(
        None, "N", "also save last.pt every N updates (--resume continues mid-epoch)"
    )
    """Also save ``last.pt`` every N >= 1 updates, so that a run killed mid-epoch resumes from
    there, bit for bit; ``None``: at epoch ends only."""
    out: str | None = _setting(None, "DIR", "run folder (None: write nothing)", flag=False)
    """The run folder; ``None``: write nothing. (``xsam train --out`` has its own default.)"""
    preset: str | None = _setting(
        None, "NAME", "the preset the config came from (recorded)", flag=False
    )
    """The preset the config came from, recorded for the reader (each preset sets it to its
    own name); it changes nothing in the run."""

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        if d["alpha_grid"] is not None:
            d["alpha_grid"] = list(d["alpha_grid"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) dict; unknown keys raise :class:`ConfigError`."""
        return apply_overrides(cls(), d)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a config file (as written to ``config.json``)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ConfigError(f"config file {path} should hold a JSON object")
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> TrainConfig:
        return apply_overrides(self, changes)

    # ------------------------------------------------------------------ validation
    def validated(self) -> TrainConfig:
        """A normalised copy (canonical names, α and grid as numbers), or :class:`ConfigError`
        naming the first invalid field, its rule and its value.

        Settings the run does not use (:func:`unused_fields`: e.g. ``rho_max`` with
        ``optimizer="sgd"``, ``momentum`` with ``base="adamw"``) are accepted and ignored:
        their type is checked (a number, an integer, true/false, a known name), their range
        is not."""
        c = dataclasses.replace(self)
        c.dataset = _choice("dataset", _dataset_key(c.dataset), DATASETS)
        c.model = _choice("model", str(c.model).lower(), MODEL_NAMES)
        c.optimizer = _choice("optimizer", str(c.optimizer).lower(), OPTIMIZERS)
        c.base = _choice("base", str(c.base).lower(), BASE_OPTIMIZERS)
        c.schedule = _choice("schedule", str(c.schedule).lower(), SCHEDULES)
        c.amp = _choice("amp", str(c.amp).lower(), AMP_MODES)
        c.perturbation = _choice("perturbation", str(c.perturbation).lower(), ("local", "global"))
        c.noise_type = _choice("noise_type", str(c.noise_type).lower(), NOISE_TYPES)
        c.weight_decay_on = _choice(
            "weight_decay_on", str(c.weight_decay_on).lower(), WEIGHT_DECAY_ON
        )
        c.device = _device("device", c.device)
        parse_augment(c.augment)
        for name in ("adaptive", "nesterov", "keep_checkpoints"):
            if not isinstance(getattr(c, name), bool):
                raise ConfigError(f"{name} should be true or false but is: {getattr(c, name)!r}")
        for name in ("data_dir", "out", "preset"):
            v = getattr(c, name)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{name} should be a string or null but is: {v!r}")
        c._validate_numbers(set(unused_fields(c)))
        return c

    def _validate_numbers(self, unused: set[str]) -> None:
        """Check and normalise the numeric fields in place; fields in ``unused`` are only
        type-checked."""
        c = self
        for name in ("rho", "eta", "momentum", "weight_decay", "warmup_epochs", "label_smoothing"):
            setattr(c, name, _number(name, getattr(c, name), low=0.0, ranged=name not in unused))
        c.lr = _number("lr", c.lr, low=0.0, strict=True)
        for name in ("momentum", "label_smoothing"):
            if name not in unused and getattr(c, name) >= 1.0:
                raise ConfigError(f"{name} should be in [0, 1) but is: {getattr(c, name)}")
        # Resolved here so that config.json shows the values the run used.
        if c.rho_max is None:
            c.rho_max = 2.0 * c.rho
        c.rho_max = _number(
            "rho_max", c.rho_max, low=0.0, strict=c.rho > 0, ranged="rho_max" not in unused
        )
        c.alpha = parse_alpha(c.alpha)
        if c.alpha != "auto":
            c.alpha_grid = None  # only searched with alpha='auto'
        else:
            c.alpha_grid = parse_alpha_grid(
                list(PAPER_ALPHA_GRID) if c.alpha_grid is None else c.alpha_grid
            )
            if not c.alpha_grid and "alpha_grid" not in unused:
                raise ConfigError("alpha_grid should be a non-empty list of numbers but is: []")
        for name in ("steps", "epochs", "batch_size", "eval_batch_size"):
            setattr(c, name, _int(name, getattr(c, name), low=None if name in unused else 1))
        for name in ("alpha_every", "threads", "limit_train", "limit_test", "val_size",
                     "checkpoint_every"):  # fmt: skip
            if getattr(c, name) is not None:
                low = None if name in unused else 1
                setattr(c, name, _int(name, getattr(c, name), low=low))
        c.seed = _int("seed", c.seed, low=0)
        c._validate_perturb_schedule(unused)
        c.noise_seed = _int("noise_seed", c.noise_seed, low=0)
        c.label_noise = _number("label_noise", c.label_noise, low=0.0)
        if c.label_noise >= 1.0:
            raise ConfigError(f"label_noise should be in [0, 1) but is: {c.label_noise}")
        for name in ("width", "depth"):
            if getattr(c, name) is not None:
                low = None if name in unused else 1
                setattr(c, name, _int(name, getattr(c, name), low=low))
        if "nesterov" not in unused and c.nesterov and c.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0")
        if c.warmup_epochs > c.epochs:
            raise ConfigError(
                f"warmup_epochs should be <= epochs ({c.epochs}) but is: {c.warmup_epochs}"
            )
        if c.optimizer == "xsam":
            try:
                checks.adaptive_eta("eta", c.eta, c.adaptive)
            except checks.BadArgument as exc:
                raise _config_error(exc, "a number", str(c.eta)) from None

    def _validate_perturb_schedule(self, unused: set[str]) -> None:
        c = self
        c.perturb_every = _int(
            "perturb_every", c.perturb_every, low=None if "perturb_every" in unused else 1
        )
        for name in ("perturb_start", "perturb_prob", "perturb_reuse"):
            ranged = name not in unused
            setattr(c, name, _number(name, getattr(c, name), low=0.0, ranged=ranged))
            if ranged and name != "perturb_reuse" and getattr(c, name) > 1.0:
                raise ConfigError(f"{name} should be in [0, 1] but is: {getattr(c, name)}")

    @property
    def augmentation(self) -> Augment:
        return parse_augment(self.augment)


SAM_FAMILY_FIELDS = (
    "rho",
    "steps",
    "adaptive",
    "eta",
    "perturbation",
    "perturb_every",
    "perturb_start",
    "perturb_prob",
    "perturb_reuse",
)
"""Settings of the SAM family's ascent: used by ``sam`` and ``xsam``, not by ``sgd``."""
XSAM_FIELDS = ("alpha", "rho_max", "alpha_grid", "alpha_every")
"""XSAM's α settings: used by ``xsam`` only."""
SGD_BASE_FIELDS = ("momentum", "nesterov")
"""Settings of the SGD base optimizer: not used with ``base="adamw"``."""
WIDTH_MODELS = ("mlp", "plain_cnn", "vit")
"""Models with a ``width`` option."""
DEPTH_MODELS = ("mlp", "vit")
"""Models with a ``depth`` option."""


def unused_fields(config: TrainConfig) -> tuple[str, ...]:
    """The fields ``config``'s optimizer and base optimizer do not use: a run ignores them,
    and :meth:`TrainConfig.validated` checks only their type. ``sgd`` uses neither
    :data:`SAM_FAMILY_FIELDS` nor :data:`XSAM_FIELDS`; ``sam`` not :data:`XSAM_FIELDS`;
    ``base="adamw"`` not :data:`SGD_BASE_FIELDS`."""
    optimizer, base = str(config.optimizer).lower(), str(config.base).lower()
    unused: list[str] = []
    if optimizer not in ("sam", "xsam"):
        unused += SAM_FAMILY_FIELDS
    if optimizer != "xsam":
        unused += XSAM_FIELDS
    if base != "sgd":
        unused += SGD_BASE_FIELDS
    model = str(config.model).lower()
    if model not in WIDTH_MODELS:
        unused.append("width")
    if model not in DEPTH_MODELS:
        unused.append("depth")
    return tuple(unused)


def resume_diff(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """``"key: old -> new"`` for every field outside :data:`RESUME_FREE_KEYS` in which two
    (validated) configs differ: why ``new`` cannot continue a run made with ``saved``."""
    a, b = saved.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in RESUME_FREE_KEYS and a[k] != b[k]]


# ---------------------------------------------------------------------- key=value parsing
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
FLAG_HELP: dict[str, tuple[str | None, str]] = {
    f.name: (f.metadata["metavar"], f.metadata["help"])
    for f in dataclasses.fields(TrainConfig)
    if f.metadata["flag"]
}
"""``(metavar, help)`` of every field offered as a run-settings flag (``metavar`` ``None``: an
on/off switch), read from the fields' metadata: the lines of ``xsam train --help``."""


_HINTS = typing.get_type_hints(TrainConfig)
_PARSERS: dict[str, Callable[[object], Any]] = {
    f.name: f.metadata["parse"] or _type_parser(f.name, _HINTS[f.name])
    for f in dataclasses.fields(TrainConfig)
}
"""Each field's parser: the one declared on the field (``alpha``, ``alpha_grid``,
``alpha_every``), else the one its annotation gives."""


def parse_field(name: str, value: object) -> Any:
    """Convert ``value`` (a string from the command line, or a JSON value) for field ``name``."""
    if name not in _PARSERS:
        raise ConfigError(f"unknown config key {name!r}; accepted: {', '.join(FIELD_NAMES)}")
    try:
        return _PARSERS[name](value)
    except ConfigError as exc:
        if str(exc).startswith(name):
            raise
        raise ConfigError(f"{name}: {exc}") from None


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``config`` with ``overrides`` (field name -> value) applied; keys may use
    ``-`` for ``_``. Unknown keys raise :class:`ConfigError`."""
    changes = {}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        changes[name] = parse_field(name, value)
    return dataclasses.replace(config, **changes)


"""What each preset is for and what it costs, as ``xsam presets`` prints it."""


def resolve_config(
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """``base`` (default :class:`TrainConfig()`), then the preset's values, then ``overrides``.
    Not yet validated (call :meth:`TrainConfig.validated`)."""
    config = base if base is not None else TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; accepted: {', '.join(PRESETS)}")
        config = apply_overrides(config, PRESETS[preset])
    if overrides:
        config = apply_overrides(config, overrides)
    return config
