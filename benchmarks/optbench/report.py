"""The markdown report, rendered from the results dict alone (``render``)."""

from __future__ import annotations

from typing import Any

import xsam

from .config import MEMORY_OPTIMIZERS, UPDATE_VARIANTS
from .floor import LABELS as FLOOR_LABELS

Lines = list[str]


def ms(s: float) -> str:
    return f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def ci(u: dict[str, Any], key: str) -> str:
    """``u[key]`` with its 95% interval ``u[key + "_ci95"]``."""
    lo, hi = u[key + "_ci95"]
    return f"{u[key]:.3f} ({lo:.3f}–{hi:.3f})"


def header(res: dict[str, Any]) -> Lines:
    """Machine, command, load and wall time."""
    m = res["machine"]
    return [
        f"Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, "
        f"{m['torch_threads']} threads, device `{m['device']}`"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f", float32, {m['date']}.",
        f"Command: `{m['command']}`"
        + (" (**quick smoke run**)" if res["quick"] else "")
        + (
            f". Load average (1 min) at start {m['loadavg_start'][0]:.2f}, "
            f"at end {m['loadavg_end'][0]:.2f}; wall time {res['wall_s'] / 60:.1f} min."
            if m.get("loadavg_start") and m.get("loadavg_end")
            else ""
        ),
    ]


def update_times_table(res: dict[str, Any]) -> Lines:
    """Section 1: median ms per update [IQR] of every variant."""
    L = [
        "### 1. Whole update (forward + backward included), median ms per update [IQR]",
        "",
        "| model | input | " + " | ".join(UPDATE_VARIANTS.values()) + " |",
        "|---|---|" + "---:|" * len(UPDATE_VARIANTS),
    ]
    for u in res["updates"]:
        cells = []
        for k in UPDATE_VARIANTS:
            lo, hi = u["iqr_s"][k]
            cells.append(f"{ms(u['median_s'][k])} [{ms(lo)}–{ms(hi)}]")
        shape = "×".join(str(s) for s in u["input"])
        L.append(
            f"| {u['model']} ({u['n_params']:,} params) | {shape} | " + " | ".join(cells) + " |"
        )
    return L


def update_ratios_table(res: dict[str, Any]) -> Lines:
    """Section 1: measured ratios, control, search cost and epoch ratio."""
    n = res["updates"][0]["alpha_every"]
    L = [
        "Measured ratios: medians of per-round ratios (95% bootstrap interval). Control: a "
        "second, identical SAM instance against the first — how far apart two identical "
        "variants land in this run, i.e. the resolution of the ratios. Search cost: a search "
        f"update ({len(xsam.DEFAULT_ALPHA_GRID)} forward probes) minus the auto update of the "
        "same round, median over the rounds that timed it. Epoch ratio: one search per "
        f"{n} updates, per round `(t_auto + search_cost/{n}) / t_sam`. Noise: median "
        "over fastest SGD update (1.00 on a quiet machine).",
        "",
        "| model | rounds (search) | noise | control SAM′/SAM | XSAM α=0.5 / SAM "
        "| XSAM auto / SAM | search cost | amortised per update | epoch ratio "
        "| ≤ 1.03 per update | ≤ 1.03 epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for u in res["updates"]:
        L.append(
            f"| {u['model']} | {u['rounds']} ({u['search_rounds']}) "
            f"| {u['contention_factor_sgd']:.2f} "
            f"| {u['ratio_control_sam_b_over_sam']:.3f} "
            f"({u['ratio_control_ci95'][0]:.3f}–{u['ratio_control_ci95'][1]:.3f}) "
            f"| {ci(u, 'ratio_fixed_over_sam')} | {ci(u, 'ratio_auto_over_sam')} "
            f"| {ms(u['search_cost_s'])} ms = {u['search_cost_in_sam_updates']:.2f} SAM updates "
            f"| {u['amortised_search_s_per_update'] * 1e3:.2f} ms "
            f"= {100 * u['amortised_search_over_sam']:.2f}% "
            f"| {ci(u, 'ratio_epoch')} "
            f"| {met(u['met_update'])} | {met(u['met_epoch'])} |"
        )
    return L


def decomposed_table(res: dict[str, Any]) -> Lines:
    """Section 1: the decomposed estimate from the optimizer time inside each update."""
    L = [
        "Decomposed: the forward/backward passes are the same work under SAM and XSAM, so "
        "XSAM's extra cost per update is its extra optimizer time — `ascent_step` + "
        "`descent_direction`, timed inside every `step(closure)` (median of per-round "
        "differences, far less noisy than the whole update). Ratio = 1 + extra / SAM update; "
        "epoch = 1 + (extra + search cost / N) / SAM update.",
        "",
        "| model | optimizer time in a SAM update | in XSAM α=0.5 | in XSAM auto "
        "| XSAM extra per update | ratio per update | epoch ratio "
        "| ≤ 1.03 per update | ≤ 1.03 epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for u in res["updates"]:
        d = u["decomposed"]
        ot = u["optimizer_time_in_update_s"]
        L.append(
            f"| {u['model']} | {ot['sam'] * 1e3:.2f} ms | {ot['xsam_fixed'] * 1e3:.2f} ms "
            f"| {ot['xsam_auto'] * 1e3:.2f} ms | {d['xsam_auto_extra_s'] * 1e3:.2f} ms "
            f"| {d['ratio_fixed_over_sam']:.4f} (α=0.5), {d['ratio_auto_over_sam']:.4f} (auto) "
            f"| {d['ratio_epoch']:.4f} | {met(d['met_update'])} | {met(d['met_epoch'])} |"
        )
    return L


def parity_sentence(res: dict[str, Any]) -> str:
    return (
        "Parity first: xsam.XSAM and the per-tensor-loop PlainXSAM give the same d "
        + ", ".join(
            f"({p['param_set']}, k={p['steps']}, α={p['alpha']:g}: "
            f"{p['f64_xsam_vs_plain']:.0e} in float64, "
            f"{p['f32_xsam_vs_plain']:.0e} in float32)"
            for p in res["parity"]
        )
        + " (relative L2 error of d; in float32 each is about 1e-5 from the float64 result), "
        + "and both restore θ₀ bit-exactly."
    )


def opt_only_row(o: dict[str, Any], impl: str) -> str:
    md = o["median_s"][impl]
    head = f"| {o['param_set']} ({o['rounds']} rounds) | {o['n_tensors']} "
    head += f"| {o['n_params']:,} | {impl} "
    cells = f"| {ms(md['ascent'])} | {ms(md['descent'])} | {ms(md['base'])} "
    cells += f"| {ms(md['total'])} "
    if impl == "xsam":
        lo, hi = o["speedup_total_ci95"]
        wlo, whi = o["speedup_wrapper_ci95"]
        cells += (
            f"| {o['speedup_total']:.2f}× ({lo:.2f}–{hi:.2f}) "
            f"| {o['speedup_wrapper']:.2f}× ({wlo:.2f}–{whi:.2f}) | {met(o['met'])} |"
        )
    else:
        cells += "| | | |"
    return head + cells


def opt_only_section(res: dict[str, Any]) -> Lines:
    """Section 2: parity, then optimizer-only medians and speed-ups."""
    L = [
        "### 2. Optimizer-only work (fixed gradients, no forward/backward), median ms",
        "",
        parity_sentence(res),
        "",
        "| param set | tensors | params | impl | ascent | descent | base SGD step | total "
        "| plain/xsam total | plain/xsam ascent+descent | target ≥ 3× |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    L += [opt_only_row(o, impl) for o in res["opt_only"] for impl in ("xsam", "plain")]
    if res["machine"]["device"].startswith("cpu"):
        L += [
            "",
            "On CPU a `torch._foreach_*` op is itself a C++ loop over the tensors, so fusing "
            "the loop saves Python and dispatch overhead per tensor (tens of µs), not memory "
            "traffic; on large tensors both implementations are bound by memory bandwidth. The "
            "3× target is about kernel launches on a GPU (run with `--device cuda`).",
        ]
    return L


def floor_section(res: dict[str, Any]) -> Lines:
    """Section 2b: optimizer-only time per update against the copy floor."""
    if "floor" not in res:
        return []
    L = [
        "### 2b. Optimizer-only time against the memory-bandwidth floor (same run)",
        "",
        "Floor = streams / 2 × the median time of a plain copy between parameter-sized "
        "buffers (rotating over 4, so no pass is served from cache); a stream is one read or "
        "one write of a parameter-sized vector (`optbench/floor.py` lists them). "
        "time / floor: median of per-round ratios (95% interval).",
        "",
        "| param set | copy (GB/s) | update | streams | median ms | floor ms | time / floor "
        "| before / now |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for f in res["floor"]:
        head = f"| {f['param_set']} ({f['n_params']:,}) | {f['copy_s'] * 1e3:.2f} ms "
        head += f"({f['copy_GBps']:.0f}) "
        for kind, row in f["rows"].items():
            base = kind.removeprefix("before_")
            name = FLOOR_LABELS[base] + (" — before" if kind != base else "")
            lo, hi = row["over_floor_ci95"]
            speed = ""
            if "speedup_now" in row:
                slo, shi = row["speedup_now_ci95"]
                speed = f"{row['speedup_now']:.2f}× ({slo:.2f}–{shi:.2f})"
            L.append(
                f"{head}| {name} | {f['streams'][base]} | {row['median_s'] * 1e3:.2f} "
                f"| {row['floor_s'] * 1e3:.2f} | {row['over_floor']:.2f} ({lo:.2f}–{hi:.2f}) "
                f"| {speed} |"
            )
            head = "| | "
    return L


def fraction_section(res: dict[str, Any]) -> Lines:
    """Share of a whole update spent in the optimizer's own calls (section 1's runs)."""
    if "updates" not in res:
        return []
    L = [
        "Share of a whole update spent outside forward/backward (the optimizer's own calls: "
        "`opt.step()` for SGD, `ascent_step` + `descent_direction` for SAM and XSAM; the "
        "base step of SAM/XSAM, about SGD's, is not in it), medians:",
        "",
        "| model | SGD | SAM k=1 | XSAM α=0.5 | XSAM auto |",
        "|---|---:|---:|---:|---:|",
    ]
    for u in res["updates"]:
        inner, med = u["optimizer_time_in_update_s"], u["median_s"]
        cells = [
            f"{inner[k] * 1e3:.2f} ms = {100 * inner[k] / med[k]:.1f}%" if k in inner else "—"
            for k in ("sgd", "sam", "xsam_fixed", "xsam_auto")
        ]
        L.append(f"| {u['model']} | " + " | ".join(cells) + " |")
    return L


def memory_section(res: dict[str, Any]) -> Lines:
    """Section 3: kept state and transient peak per optimizer."""
    mem = res["memory"]
    L = [
        f"### 3. Memory ({mem['param_set']} parameter list, {mem['param_bytes'] / 2**20:.1f} MiB "
        "of float32 parameters)",
        "",
        f"Transient peak: extra bytes allocated during one update (ascent + descent + base "
        f"step), measured with {mem['transient_method']}.",
        "",
        "| optimizer | base optimizer state | extra state kept by the wrapper | transient peak "
        "| target: extra ≤ 1 buffer |",
        "|---|---:|---:|---:|---|",
    ]
    for r in mem["rows"]:
        L.append(
            f"| {MEMORY_OPTIMIZERS[r['optimizer']]} | {r['base_state_over_params']:.2f}× "
            f"| {r['extra_state_bytes'] / 2**20:.1f} MiB = {r['extra_over_params']:.2f}× "
            f"| {r['transient_peak_bytes'] / 2**20:.1f} MiB = {r['transient_peak_over_params']:.2f}× "
            f"| {'—' if r['optimizer'] == 'sgd' else met(r['met'])} |"
        )
    return L


def render(res: dict[str, Any]) -> str:
    """The whole report: header, then the sections, separated by blank lines."""
    if "updates" not in res:  # --floor-only
        return "\n\n".join("\n".join(p) for p in (header(res), floor_section(res)))
    parts = [
        header(res),
        update_times_table(res),
        update_ratios_table(res),
        decomposed_table(res),
        fraction_section(res),
        opt_only_section(res),
        floor_section(res),
        memory_section(res),
    ]
    return "\n\n".join("\n".join(p) for p in parts if p)
