"""Communication per update of SAM and XSAM inside the frameworks (Lightning, the Hugging Face
Trainer, Accelerate) and through the plain API, beside plain SGD: how many collectives and how
many bytes, per perturbation mode, with 2 CPU processes (gloo) started by each framework's
own launcher.

Counted, not estimated: a DDP comm hook counts every gradient bucket DDP all-reduces (calls and
bytes); ``torch.distributed.all_reduce``/``all_gather``/``all_gather_into_tensor``/``broadcast``
are wrapped to count every other collective, split by caller: xsam's own (the averaged
direction, probe losses, the finite flag) and the framework's (e.g. the Trainer's gather of
``num_items_in_batch``). Counting runs only between the first and the last training step, so
set-up collectives are left out; DDP's buffer broadcast (C++, none here: no buffers) is not
seen. XSAM searches α at every update (``alpha_every=1``): the most it communicates.

    python benchmarks/bench_framework_comm.py            # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import xsam

WORLD, ROWS, UPDATES = 2, 16, 4
VARIANTS = [("sgd", None), ("sam", "local"), ("sam", "global"), ("xsam", "local"),
            ("xsam", "global")]  # fmt: skip
_OPS = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast")
_REAL = {op: getattr(dist, op) for op in _OPS}


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))  # fmt: skip


def batches(rank: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(rank)
    return [(torch.randn(ROWS, 32, generator=g), torch.randint(0, 10, (ROWS,), generator=g))
            for _ in range(n)]  # fmt: skip


def make_opt(kind: str, params) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)
    if kind == "sam":
        return xsam.SAM(params, torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)
    return xsam.XSAM(params, torch.optim.SGD, rho=0.15, alpha="auto", alpha_every=1, lr=0.01,
                     momentum=0.9)  # fmt: skip


# ------------------------------------------------------------------------------ counting
class Counter:
    def __init__(self) -> None:
        self.active = False
        self.rows: dict[str, list[int]] = {}  # source -> [calls, bytes]

    def add(self, source: str, t: torch.Tensor | list) -> None:
        if not self.active:
            return
        tensors = t if isinstance(t, list) else [t]
        row = self.rows.setdefault(source, [0, 0])
        row[0] += 1
        row[1] += sum(x.numel() * x.element_size() for x in tensors if torch.is_tensor(x))

    @contextlib.contextmanager
    def counting(self):
        self.rows, self.active = {}, True
        try:
            yield
        finally:
            self.active = False


COUNTER = Counter()


def _wrap(op: str):
    real = _REAL[op]

    def counted(tensor, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        source = "xsam" if caller.startswith("xsam") else "framework"
        COUNTER.add(f"{source} {op}", tensor)
        return real(tensor, *args, **kwargs)

    return counted


def install() -> None:
    for op in _OPS:
        setattr(dist, op, _wrap(op))


def ddp_hook(state, bucket):
    buf = bucket.buffer()
    COUNTER.add("DDP all_reduce", buf)
    fut = _REAL["all_reduce"](buf.div_(dist.get_world_size()), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def record(out: str, framework: str, kind: str, mode: str | None, accum: int) -> None:
    if dist.get_rank() != 0:
        return
    param_bytes = sum(p.numel() * p.element_size() for p in net().parameters())
    row = {"framework": framework, "optimizer": kind, "perturbation": mode, "accumulation": accum,
           "param_bytes": param_bytes, "updates": UPDATES,
           "per_update": {k: [v[0] / UPDATES, v[1] / UPDATES] for k, v in COUNTER.rows.items()}}  # fmt: skip
    with open(os.path.join(out, f"{framework}-{kind}-{mode}-a{accum}.json"), "w") as fh:
        json.dump(row, fh)


# ------------------------------------------------------------------------------ Lightning
def run_lightning(out: str) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from xsam.integrations.lightning import SAMModule

    class Count(pl.Callback):
        def on_train_start(self, trainer, module):
            # Lightning registers DDPStrategy(ddp_comm_hook=) on CUDA only: register it here
            trainer.strategy.model.register_comm_hook(None, ddp_hook)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                COUNTER.rows, COUNTER.active = {}, True

        def on_train_end(self, trainer, module):
            COUNTER.active = False

    def module_for(kind, mode, accum):
        base = SAMModule if kind != "sgd" else pl.LightningModule

        class M(base):
            sam_log_name = None
            sam_perturbation = mode

            def __init__(self):
                super().__init__()
                self.net = net()

            def loss(self, batch):
                return F.cross_entropy(self.net(batch[0]), batch[1])

            def sam_loss(self, batch, batch_idx):
                return self.loss(batch)

            if kind == "sgd":

                def training_step(self, batch, batch_idx):
                    return self.loss(batch)

            def configure_optimizers(self):
                return make_opt(kind, self.parameters())

            def train_dataloader(self):
                data = batches(self.global_rank, UPDATES * accum)
                return torch.utils.data.DataLoader(data, batch_size=None)

        return M()

    for accum in (1, 2):
        for kind, mode in VARIANTS:
            trainer = pl.Trainer(
                accelerator="cpu", devices=WORLD, strategy=DDPStrategy(),
                max_epochs=1, accumulate_grad_batches=accum, logger=False, callbacks=[Count()],
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                use_distributed_sampler=False, num_sanity_val_steps=0,
            )  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(module_for(kind, mode, accum))
            record(out, "lightning", kind, mode, accum)


# ------------------------------------------------------------------------------ HF Trainer
def run_hf(out: str) -> None:
    import transformers

    from xsam.integrations.transformers import SAMTrainer

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net()

        def forward(self, x, labels=None, **kwargs):
            return {"loss": F.cross_entropy(self.net(x), labels)}

    class Mixin:
        accum = 1

        def get_train_dataloader(self):
            data = [
                {"x": x, "labels": y} for x, y in batches(dist.get_rank(), UPDATES * self.accum)
            ]
            return torch.utils.data.DataLoader(data, batch_size=None)

        def training_step(self, model, inputs, num_items_in_batch=None):
            if not getattr(self, "_hooked", False):
                model.register_comm_hook(None, ddp_hook)
                self._hooked = True
                COUNTER.rows, COUNTER.active = {}, True
            return super().training_step(model, inputs, num_items_in_batch)

    class Plain(Mixin, transformers.Trainer):
        pass

    class Sharp(Mixin, SAMTrainer):
        pass

    for accum in (1, 2):
        for kind, mode in VARIANTS:
            model = Model()
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                args = transformers.TrainingArguments(
                    output_dir=tmp, max_steps=UPDATES, gradient_accumulation_steps=accum,
                    learning_rate=0.01, lr_scheduler_type="constant", max_grad_norm=0.0,
                    logging_steps=1000, save_strategy="no", report_to=[], disable_tqdm=True,
                    use_cpu=True, ddp_backend="gloo",
                )  # fmt: skip
                opts = (make_opt(kind, model.parameters()), None)
                extra = {} if kind == "sgd" else {"perturbation": mode}
                cls = Plain if kind == "sgd" else Sharp
                trainer = cls(model=model, args=args, optimizers=opts, **extra)
                trainer.accum = accum
                trainer.train()
                COUNTER.active = False
            record(out, "hf_trainer", kind, mode, accum)
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------------------ Accelerate
def _accelerate_worker(out: str) -> None:
    import accelerate

    from xsam.integrations.accelerate import sam_update

    torch.set_num_threads(1)
    install()
    acc = accelerate.Accelerator(cpu=True)
    for accum in (1, 2):
        for kind, mode in VARIANTS:
            module = net()
            model, opt = acc.prepare(module, make_opt(kind, module.parameters()))
            model.register_comm_hook(None, ddp_hook)
            data = batches(acc.process_index, UPDATES * accum)

            def loss_fn(b, model=model):
                return F.cross_entropy(model(b[0]), b[1])

            with COUNTER.counting():
                for s in range(UPDATES):
                    window = data[s * accum : (s + 1) * accum]
                    if kind == "sgd":
                        for i, b in enumerate(window):
                            last = i == accum - 1
                            with contextlib.nullcontext() if last else acc.no_sync(model):
                                acc.backward(loss_fn(b) / accum)
                        opt.step()
                        opt.zero_grad()
                    else:
                        sam_update(acc, opt, window, loss_fn, model=model, perturbation=mode)
            record(out, "accelerate", kind, mode, accum)
        _plain_api(out, acc.process_index)
    acc.wait_for_everyone()


def _plain_api(out: str, rank: int) -> None:
    """The plain API (opt.step(closure) on a DDP module, model= given), accumulation 1."""
    for kind, mode in VARIANTS:
        module = net()
        ddp = nn.parallel.DistributedDataParallel(module)
        ddp.register_comm_hook(None, ddp_hook)
        if kind == "sgd":
            opt = make_opt(kind, ddp.parameters())
        else:
            cls = xsam.SAM if kind == "sam" else xsam.XSAM
            kw = dict(rho=0.05) if kind == "sam" else dict(rho=0.15, alpha="auto", alpha_every=1)
            opt = cls(ddp.parameters(), torch.optim.SGD, lr=0.01, momentum=0.9, model=ddp,
                      perturbation=mode, **kw)  # fmt: skip
        with COUNTER.counting():
            for x, y in batches(rank, UPDATES):

                def closure(x=x, y=y, ddp=ddp):
                    loss = F.cross_entropy(ddp(x), y)
                    if torch.is_grad_enabled():
                        loss.backward()
                    return loss

                if kind == "sgd":
                    opt.zero_grad()
                    closure()
                    opt.step()
                else:
                    opt.step(closure)
        record(out, "plain API", kind, mode, 1)


def run_accelerate(out: str, port: str) -> None:
    from accelerate import notebook_launcher

    notebook_launcher(_accelerate_worker, (out,), num_processes=WORLD, use_port=port)


# ------------------------------------------------------------------------------ driver
def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _launch(framework: str, out: str) -> None:
    me = os.path.abspath(__file__)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _port()}  # fmt: skip
    if framework == "hf_trainer":
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
               f"--master_port={_port()}", me, "--worker", framework, "--out", out]  # fmt: skip
    else:
        cmd = [sys.executable, me, "--worker", framework, "--out", out]
    subprocess.run(cmd, env=env, check=True, capture_output=True)


def _fmt(per: dict, key: str, pbytes: int) -> str:
    calls, nbytes = per.get(key, [0, 0])
    if not calls:
        return "–"
    size = f"{nbytes / pbytes:.2f} × params" if nbytes >= pbytes / 2 else f"{nbytes:.0f} B"
    return f"{calls:g} ({size})"


def table(rows: list[dict]) -> str:
    lines = ["| framework | optimizer | perturbation | accumulation | DDP bucket all-reduces | "
             "xsam's all-reduces | framework's collectives |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        per, pb = r["per_update"], r["param_bytes"]
        other = {k: v for k, v in per.items() if k.startswith("framework")}
        fw = "; ".join(f"{k.split()[1]} {_fmt(other, k, pb)}" for k in sorted(other)) or "–"
        lines.append(
            f"| {r['framework']} | {r['optimizer']} | {r['perturbation'] or '–'} | "
            f"{r['accumulation']} | {_fmt(per, 'DDP all_reduce', pb)} | "
            f"{_fmt(per, 'xsam all_reduce', pb)} | {fw} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results/framework_comm.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.worker == "lightning":
        install()
        return run_lightning(args.out)
    if args.worker == "hf_trainer":
        install()
        return run_hf(args.out)
    if args.worker == "accelerate":
        return run_accelerate(args.out, os.environ["MASTER_PORT"])
    with tempfile.TemporaryDirectory() as tmp:
        for framework in ("lightning", "hf_trainer", "accelerate"):
            _launch(framework, tmp)
        rows = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))]
    order = {f: i for i, f in enumerate(("plain API", "lightning", "hf_trainer", "accelerate"))}
    variant = {v: i for i, v in enumerate(VARIANTS)}
    rows.sort(key=lambda r: (order[r["framework"]], r["accumulation"],
                             variant[(r["optimizer"], r["perturbation"])]))  # fmt: skip
    meta = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "world": WORLD, "updates": UPDATES, "rows_per_micro_batch": ROWS}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(table(rows))
    print(f"\n{rows[0]['param_bytes']} parameter bytes; {meta}")


if __name__ == "__main__":
    main()
