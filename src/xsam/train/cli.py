"""The ``xsam`` command: ``train``, ``compare``, ``tune``, ``demo``, ``presets`` and ``probe``.

Every config flag defaults to "not given": the config is the defaults, then ``--preset``, then
``--config FILE``, then the flags given. Bad input ends with one line ``xsam: error: ...`` on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .config import (
    FIELD_NAMES,
    FLAG_HELP,
    PRESET_NOTES,
    PRESETS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    resolve_config,
    unused_fields,
)
from .names import DEMO_DIR, DEMO_EPOCHS, DEMO_OPTIMIZERS, DEMO_PRESET

if TYPE_CHECKING:
    from .demo import demo_plan

# Only the standard library, .config and .names are imported here: `xsam --help` and argument
# errors answer without torch (seconds to import). Each command imports what it runs.

__all__ = ["DEMO_OPTIMIZERS", "DEMO_PRESET", "build_parser", "demo_plan", "main"]


def __getattr__(name: str) -> Any:  # PEP 562: demo_plan from .demo, which imports torch
    if name == "demo_plan":
        from .demo import demo_plan

        return demo_plan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


_SCOPE_NOTE = (
    "A setting marked [sam, xsam], [xsam], [base sgd] or with model names is used only by "
    "those optimizers or models; with another one it is accepted and ignored (its type is "
    "checked, not its range)."
)


def _add_config_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    g = p.add_argument_group("run settings (override the preset)", _SCOPE_NOTE)
    g.add_argument("--preset", metavar="NAME", default=argparse.SUPPRESS,
                   help=f"start from a named setup: {', '.join(PRESETS)} (see `xsam presets`)")  # fmt: skip
    g.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="start from a JSON config (e.g. a run's config.json)")  # fmt: skip
    for name in FIELD_NAMES:
        if name in skip or name not in FLAG_HELP:  # the help lines are the fields' metadata
            continue
        metavar, text = FLAG_HELP[name]
        flag = "--" + name.replace("_", "-")
        if metavar is None:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=text)  # fmt: skip
        else:
            g.add_argument(flag, metavar=metavar, default=argparse.SUPPRESS, help=text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xsam`` command."""
    parser = _Parser(
        prog="xsam",
        description="Train and compare SAM-family optimizers (XSAM, SAM, SGD).",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_train(sub)
    _add_compare(sub)
    _add_tune(sub)
    _add_demo(sub)
    sub.add_parser("presets", help="list the named presets", allow_abbrev=False)
    _add_probe(sub)
    return parser


def _add_train(sub: Any) -> None:
    """The ``xsam train`` subcommand and its flags."""
    t = sub.add_parser(
        "train",
        help="train one model and write a run folder",
        description="Train one model; write config.json, run.json, metrics.jsonl/.csv and "
        "last.pt (after every epoch) into the run folder.",
        allow_abbrev=False,
    )
    t.add_argument("--out", metavar="DIR", default=argparse.SUPPRESS,
                   help="run folder (default: runs/<preset or dataset-model>-<optimizer>-seed<S>)")  # fmt: skip
    t.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    t.add_argument("--force", action="store_true", help="overwrite the run in the run folder")
    t.add_argument("--stop-after", metavar="N", type=int, default=None,
                   help="stop after N finished epochs (continue later with --resume)")  # fmt: skip
    t.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_config_flags(t)


def _add_compare(sub: Any) -> None:
    """The ``xsam compare`` subcommand and its flags."""
    c = sub.add_parser(
        "compare",
        help="train a grid of optimizers × seeds, tabulate and plot",
        description="Train every optimizer variant with every seed (one subfolder each; "
        "complete runs are skipped, stopped ones resumed), then write results.md (mean ± std), "
        "results.json, test_acc.png and alpha.png.",
        allow_abbrev=False,
    )
    c.add_argument("--optimizers", metavar="LIST", default="sgd,sam,xsam",
                   help="optimizer variants, each NAME[:key=value,...], e.g. "
                   "'sgd,sam:rho=0.05,xsam:steps=2,alpha_every=50' (default: sgd,sam,xsam)")  # fmt: skip
    c.add_argument("--seeds", metavar="LIST", default="0,1,2",
                   help="seeds: 0,1,2 or 0-4 (default: 0,1,2)")  # fmt: skip
    c.add_argument("--out", metavar="DIR", default=None,
                   help="comparison folder (default: runs/compare-<preset or dataset-model>)")  # fmt: skip
    c.add_argument("--pairs", metavar="LIST", default=None,
                   help="pairs to compare, each B-A with labels as in --optimizers, e.g. "
                   "'xsam-sam,sam-sgd' (default: every pair of up to 4 variants, B listed "
                   "after A; with more, each against the first)")  # fmt: skip
    c.add_argument("--jobs", metavar="N", default="1",
                   help="train up to N runs at a time, each in its own process with "
                   "max(1, CPUs // N) threads unless --threads is given (default 1)")  # fmt: skip
    c.add_argument("--force", action="store_true", help="redo runs that are already there")
    c.add_argument("--quiet", action="store_true",
                   help="print only the results (the table and the verdict lines)")  # fmt: skip
    _add_config_flags(c, skip=("optimizer", "seed"))


def _add_tune(sub: Any) -> None:
    """The ``xsam tune`` subcommand and its flags."""
    tu = sub.add_parser(
        "tune",
        help="choose ρ on a validation split (never the test set)",
        description="Train the optimizer with every ρ of --rhos and every seed (a comparison: "
        "complete runs are skipped, stopped ones resumed), then choose the ρ with the highest "
        "mean final validation accuracy over the seeds (ties: the smaller ρ). Needs "
        "--val-size. Writes tune.json and tune.md; the test accuracy is not looked at.",
        allow_abbrev=False,
    )
    tu.add_argument("--optimizer", metavar="VARIANT", default="xsam", dest="variant",
                    help="sam or xsam with fixed settings but ρ, e.g. 'xsam:adaptive=true' "
                    "(default: xsam)")  # fmt: skip
    tu.add_argument("--rhos", metavar="LIST", default="0.02,0.05,0.1,0.2,0.5",
                    help="candidate ρ values (default: 0.02,0.05,0.1,0.2,0.5)")  # fmt: skip
    tu.add_argument("--seeds", metavar="LIST", default="0",
                    help="seeds: 0,1,2 or 0-4 (default: 0)")  # fmt: skip
    tu.add_argument("--out", metavar="DIR", default=None,
                    help="sweep folder (default: runs/tune-<preset or dataset-model>-<optimizer>)")  # fmt: skip
    tu.add_argument("--jobs", metavar="N", default="1", help="runs at a time (as in compare)")
    tu.add_argument("--force", action="store_true", help="redo runs that are already there")
    tu.add_argument("--quiet", action="store_true", help="print only the choice")
    _add_config_flags(tu, skip=("optimizer", "seed", "rho"))


def _add_demo(sub: Any) -> None:
    """The ``xsam demo`` subcommand and its flags."""
    d = sub.add_parser(
        "demo",
        help="SGD vs SAM vs XSAM where it matters: 40%% label noise, MLP, embedded sample",
        description=f"Run SGD, SAM and XSAM (k=1) with the {DEMO_PRESET} preset (the embedded "
        f"Fashion-MNIST sample with 40%% of the training labels flipped, an MLP) for "
        f"{DEMO_EPOCHS} epochs, one seed each, two runs at a time; print the table and a "
        f"caption, and write demo.md and demo.png (test accuracy and memorised wrong labels "
        f"per epoch) into a new folder under ./{DEMO_DIR}/.",
        allow_abbrev=False,
    )
    d.add_argument("--out", metavar="DIR", default=None,
                   help=f"folder (default: {DEMO_DIR}/<date-time>)")  # fmt: skip
    d.add_argument("--epochs", metavar="N", default=None, help=f"epochs (default {DEMO_EPOCHS})")
    d.add_argument("--seeds", metavar="LIST", default="0", help="seeds (default: 0)")
    d.add_argument("--device", metavar="DEV", default=None, help="auto, cpu, cuda")
    d.add_argument("--threads", metavar="N", default=None,
                   help="CPU threads per run (default 1: the numbers then do not depend on "
                   "the number of cores)")  # fmt: skip
    d.add_argument("--jobs", metavar="N", default="2",
                   help="runs at a time (default 2: one CPU thread each on 2 cores)")  # fmt: skip
    d.add_argument("--quiet", action="store_true", help="print only the table")


def _add_probe(sub: Any) -> None:
    """The ``xsam probe`` subcommand and its flags."""
    pr = sub.add_parser(
        "probe",
        help="measure the paper's direction claims on a run's kept checkpoints",
        description="For every checkpoint kept by `xsam train --keep-checkpoints`: cosines "
        "of g0, g_k@θ0 (k = 1..K) and XSAM's v(α*) to the direction u* of the loss maximum on "
        "the ρ_max sphere, on a fixed training subset; writes probe.jsonl and cosines.png.",
        allow_abbrev=False,
    )
    pr.add_argument("run", metavar="RUN_DIR", help="a run folder")
    pr.add_argument("--epochs", metavar="LIST", default=None, help="e.g. 1,5,10 (default: all)")
    pr.add_argument("--examples", metavar="N", type=int, default=250,
                    help="size of the fixed training subset (default 250)")  # fmt: skip
    pr.add_argument("--rho", metavar="R", type=float, default=None, help="default: the run's ρ")
    pr.add_argument("--rho-max", metavar="R", type=float, default=None,
                    help="default: the run's ρ_max")  # fmt: skip
    pr.add_argument("--k", metavar="K", type=int, default=3, help="largest k probed (default 3)")
    pr.add_argument("--starts", metavar="N", type=int, default=2,
                    help="random starts of the u* search, besides every candidate")  # fmt: skip
    pr.add_argument("--iters", metavar="N", type=int, default=40,
                    help="projected ascent iterations per start (default 40)")  # fmt: skip
    pr.add_argument("--sharpness", action="store_true",
                    help="also the Hessian's top eigenvalue and the worst-case loss increase")  # fmt: skip
    pr.add_argument("--landscape", action="store_true",
                    help="also the v0-v1 plane landscape of the last epoch (plane.png)")  # fmt: skip
    pr.add_argument("--out", metavar="DIR", default=None, help="default: RUN_DIR/probe")
    pr.add_argument("--threads", metavar="N", type=int, default=None, help="CPU threads")
    pr.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _config_from_args(
    ns: argparse.Namespace, base: TrainConfig | None = None, *, preset: bool = True
) -> TrainConfig:
    """base (default: defaults) ← preset (unless ``preset=False``) ← --config file ← explicit
    flags."""
    args = vars(ns)
    config = resolve_config(args.get("preset") if preset else None, None, base)
    if "config" in args:
        file_config = TrainConfig.from_json(args["config"])
        explicit = {k: v for k, v in file_config.to_dict().items() if k != "out"}
        config = apply_overrides(config, explicit)
    flags = {k: v for k, v in args.items() if k in FIELD_NAMES}
    return apply_overrides(config, flags)


def _check_resume_preset(preset: str | None, saved: TrainConfig, out: Path) -> None:
    if preset is None or preset == saved.preset:
        return
    raise ConfigError(
        f"--preset {preset} is not the preset the run in {out} started from "
        f"({saved.preset or 'none'}); --resume continues the saved config, so drop --preset "
        "(and give only the flags you mean to change); to start a different run, pass another "
        "--out (--force deletes this run and starts over)"
    )


def _default_name(config: TrainConfig) -> str:
    c = config.validated()
    return c.preset or f"{c.dataset}-{c.model}"


def _printer(quiet: bool):
    return None if quiet else (lambda s: print(s, flush=True))


def _progress(quiet: bool) -> bool:
    return not quiet and sys.stdout.isatty()


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


# ---------------------------------------------------------------------- commands
def _cmd_train(ns: argparse.Namespace) -> int:
    if ns.resume and ns.force:
        raise ConfigError("--resume and --force exclude each other")
    if ns.stop_after is not None and ns.stop_after < 1:
        raise ConfigError(f"--stop-after should be >= 1 but is: {ns.stop_after}")
    config = _config_from_args(ns)  # a flag's value that is no number fails here, torch-free
    from .checkpoint import CONFIG
    from .loop import train

    c = config.validated()
    if config.out is None:
        config = config.replace(
            out=str(Path("runs") / f"{_default_name(c)}-{c.optimizer}-seed{c.seed}")
        )
    out = Path(config.out)  # type: ignore[arg-type]
    if ns.resume and not (out / CONFIG).is_file():
        raise ConfigError(
            f"--resume: {out} holds no saved run (no {CONFIG}), so there is nothing to "
            "continue; to start a run there, drop --resume (and give its settings)"
        )
    if ns.resume:
        # The saved config is the base and only the flags written now change it (checked by
        # train): a preset named again must be the run's own, and does not reset anything.
        saved = TrainConfig.from_json(out / CONFIG)
        _check_resume_preset(getattr(ns, "preset", None), saved, out)
        config = _config_from_args(ns, saved, preset=False).replace(out=str(out))
    # under torchrun only rank 0 speaks
    log = _printer(ns.quiet or os.environ.get("RANK", "0") != "0")
    ignored = [k for k in vars(ns) if k in unused_fields(c)]
    if log and ignored:
        flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
        log(f"note: not used by optimizer {c.optimizer} with base {c.base}, ignored: {flags}")
    result = train(
        config,
        resume=ns.resume,
        force=ns.force,
        stop_after=ns.stop_after,
        log=log,
        progress=_progress(ns.quiet),
    )
    if log:
        status = "done" if result["complete"] else f"stopped after epoch {result['epochs_done']}"
        log(
            f"{status}: final test acc {_pct(result['final_test_acc'])} (best "
            f"{_pct(result['best_test_acc'])} at epoch {result['best_epoch']}), "
            + (
                f"final val acc {_pct(result['final_val_acc'])}, "
                if result["final_val_acc"] is not None
                else ""
            )
            + f"{result['wall_s']:.1f} s; run folder {out}"
        )
    return 0


def _split_variants(text: str) -> list[str]:
    """``"sgd,sam:rho=0.05,steps=2,xsam"`` -> ``["sgd", "sam:rho=0.05,steps=2", "xsam"]``: a
    ``key=value`` part belongs to the variant before it (';' and spaces separate too)."""
    variants: list[str] = []
    for part in (p.strip() for p in text.replace(";", ",").replace(" ", ",").split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and variants:
            variants[-1] += "," + part
        else:
            variants.append(part)
    return variants


def _run_compare(
    base: TrainConfig,
    variants: list[str],
    seeds: list[int],
    out: Path,
    *,
    force: bool,
    quiet: bool,
    jobs: int | str = 1,
    pairs: str | None = None,
    verdicts: bool = False,
    report: Callable[[dict[str, Any]], list[Path]] | None = None,
    before_log: Callable[[], None] | None = None,
) -> int:
    from .compare import RunsFailed, check_jobs, parse_variants, run_compare

    log = _printer(quiet)
    if log is not None and before_log is not None:
        say = log

        def log(s: str) -> None:  # e.g. the epochs a finished worker run wrote, then its line
            before_log()
            say(s)

    failed = None
    try:
        result = run_compare(
            base,
            parse_variants(variants),
            seeds,
            out,
            force=force,
            log=log,
            progress=_progress(quiet),
            jobs=check_jobs(jobs),
            pairs=pairs,
        )
    except RunsFailed as exc:
        assert exc.result is not None
        result, failed = exc.result, exc
    print()
    print(result["table"])
    if verdicts and result["pairs"] and all(p["n"] <= 1 for p in result["pairs"]):
        print("\nOne seed per variant: no paired intervals (run several seeds for a verdict).")
    elif verdicts and result["pairs"]:
        for key, what in (("final", "final"), ("best", "best-epoch")):
            print(f"\nPaired differences of the {what} test accuracy (95% CI, t over seeds):")
            for p in result["pairs"]:
                print("  " + p[key]["line"])
    files = list(result["files"])
    if report is not None:
        print()
        files += [str(f) for f in report(result)]
    if log:
        print()
        log("wrote " + ", ".join(files))
    if failed is not None:
        print(f"xsam: error: {_one_line(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_compare(ns: argparse.Namespace) -> int:
    from .compare import parse_seeds

    base = _config_from_args(ns)
    variants = _split_variants(ns.optimizers)
    seeds = parse_seeds(ns.seeds)
    out = Path(ns.out) if ns.out else Path("runs") / f"compare-{_default_name(base)}"
    with _epoch_watch(base, variants, seeds, out, quiet=ns.quiet, jobs=ns.jobs) as poll:
        return _run_compare(base, variants, seeds, out, force=ns.force, quiet=ns.quiet,
                            jobs=ns.jobs, pairs=ns.pairs, verdicts=True, before_log=poll)  # fmt: skip


def _cmd_tune(ns: argparse.Namespace) -> int:
    from .compare import RunsFailed, check_jobs, parse_seeds, parse_variants
    from .tune import TUNE_JSON, TUNE_MD, chosen_line, edge_note, format_candidates, tune_rho

    base = _config_from_args(ns)
    specs = _split_variants(ns.variant)  # not ns.optimizer: not a config field here
    if len(specs) != 1:
        raise ConfigError(f"--optimizer should be one variant but is: {ns.variant!r}")
    (variant,) = parse_variants(specs)
    out = Path(ns.out) if ns.out else Path("runs") / f"tune-{_default_name(base)}-{variant.slug}"
    log = _printer(ns.quiet)
    try:
        result = tune_rho(
            base,
            variant.label,
            ns.rhos,
            parse_seeds(ns.seeds),
            out,
            check_jobs(ns.jobs),
            force=ns.force,
            log=log,
            progress=_progress(ns.quiet),
        )
    except RunsFailed as exc:
        print(f"xsam: error: {_one_line(exc)}; no rho chosen", file=sys.stderr)
        return 1
    if log:
        print()
        print(format_candidates(result))
        print()
    print(chosen_line(result))
    note = edge_note(result)
    if note:
        print(note)
    if log:
        log(f"wrote {out / TUNE_JSON}, {out / TUNE_MD}")
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import demo_plan, write_demo_report

    base, variants, seeds, out = demo_plan(ns.out, ns.epochs, ns.seeds, ns.device, ns.threads)
    if not ns.quiet:
        c = base.validated()
        print(
            f"xsam demo: {', '.join(v.upper() for v in variants)} on the embedded Fashion-MNIST "
            f"sample with {100 * c.label_noise:.0f}% of the training labels flipped ({c.model}, "
            f"{c.epochs} epochs, seed {', '.join(map(str, seeds))}) -> {out}",
            flush=True,
        )

    def report(result: dict[str, Any]) -> list[Path]:
        return write_demo_report(out, result["table"], say=print)

    with _epoch_watch(base, variants, seeds, out, quiet=ns.quiet, jobs=ns.jobs) as poll:
        return _run_compare(base, variants, seeds, out, force=False, quiet=ns.quiet,
                            jobs=ns.jobs, report=report, before_log=poll)  # fmt: skip


def _epoch_watch(
    base: TrainConfig, variants: list[str], seeds: list[int], out: Path, *, quiet: bool,
    jobs: int | str,
) -> Any:  # fmt: skip
    """Runs in worker processes (``jobs`` > 1) print nothing: a line per epoch they finish,
    read from their run folders (:func:`xsam.train.progress.watch_epochs`)."""
    from .compare import check_jobs, parse_variants, plan_runs
    from .progress import watch_epochs

    if quiet or check_jobs(jobs) == 1:
        return contextlib.nullcontext()
    plan = plan_runs(base, parse_variants(variants), seeds, out)
    runs = [(f"{r.variant.label} seed {r.seed}", r.out, r.config.epochs) for r in plan]
    return watch_epochs(runs, lambda s: print(s, flush=True))


def _cmd_probe(ns: argparse.Namespace) -> int:
    from .probe import probe_run

    epochs = None
    if ns.epochs is not None:
        try:
            epochs = [int(e) for e in str(ns.epochs).split(",") if e.strip()]
        except ValueError:
            raise ConfigError(
                f"--epochs should be a list like 1,5,10 but is: {ns.epochs!r}"
            ) from None
    for name in ("examples", "k", "starts", "iters"):
        if getattr(ns, name) < 1:
            raise ConfigError(f"--{name} should be >= 1 but is: {getattr(ns, name)}")
    if ns.threads is not None:
        import torch

        torch.set_num_threads(ns.threads)
    where = Path(ns.out or Path(ns.run) / "probe")
    before = _file_stamps(where, _PROBE_FILES)
    records = probe_run(
        ns.run,
        epochs=epochs,
        examples=ns.examples,
        rho=ns.rho,
        rho_max=ns.rho_max,
        max_steps_k=ns.k,
        sharpness=ns.sharpness,
        landscape=ns.landscape,
        out=ns.out,
        log=_printer(ns.quiet),
        n_starts=ns.starts,
        ascent_iters=ns.iters,
    )
    if not ns.quiet:
        after = _file_stamps(where, _PROBE_FILES)
        wrote = ", ".join(n for n, stamp in after.items() if stamp and stamp != before[n])
        print(f"probed {len(records)} checkpoint(s); wrote in {where}: {wrote}")
    return 0


_PROBE_FILES = ("probe.jsonl", "cosines.png", "plane.json", "plane.png")


def _file_stamps(folder: Path, names: Sequence[str]) -> dict[str, tuple[int, int, int] | None]:
    """``(inode, size, mtime)`` of each file (``None``: absent), to tell the files a command
    wrote from older ones."""
    stamps: dict[str, tuple[int, int, int] | None] = {}
    for name in names:
        try:
            st = (folder / name).stat()
            stamps[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamps[name] = None
    return stamps


def _cmd_presets(ns: argparse.Namespace) -> int:
    width = max(map(len, PRESETS))
    for name in PRESETS:
        c = resolve_config(name).validated()
        print(
            f"{name:<{width}}  {c.dataset} {c.model}, {c.epochs} epochs, batch {c.batch_size}, "
            f"{c.base} lr {c.lr:g}, ρ {c.rho:g}, augment {c.augment}"
        )
        print(f"{'':<{width}}  {PRESET_NOTES[name]}")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "compare": _cmd_compare,
    "tune": _cmd_tune,
    "demo": _cmd_demo,
    "presets": _cmd_presets,
    "probe": _cmd_probe,
}


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _data_error() -> type[Exception]:
    """:class:`xsam.data.DataError` if the data package is loaded (else none was raised), read
    without importing it (it imports torch)."""
    readers = sys.modules.get("xsam.data.readers")
    return readers.DataError if readers is not None else _UsageError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xsam`` command; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help(sys.stderr)
            return 2
        return _COMMANDS[ns.command](ns)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (_UsageError, ConfigError, _data_error()) as exc:
        print(f"xsam: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"xsam: error: {where}{_one_line(exc.strerror or exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nxsam: interrupted; finished epochs (with --checkpoint-every N, the last N-th "
            "update) are saved (rerun the command with --resume, or the same compare/demo "
            "command, to continue)",
            file=sys.stderr,
        )
        return 130
