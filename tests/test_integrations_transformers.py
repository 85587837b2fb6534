"""Hugging Face Trainer through xsam.integrations.transformers.SAMTrainer, with the real
framework and a tiny BERT built from a config (no download): the weights after a few optimizer
steps equal those of the same updates driven by hand through opt.step(closure), in fp32 and
bf16, with and without gradient accumulation, SAM and XSAM (α searched), with max_grad_norm,
and both ways of asking for the optimizer (optimizers= and sam=)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import xsam

transformers = pytest.importorskip("transformers", reason="install torch-xsam[transformers]")
from xsam.integrations.transformers import SAMTrainer  # noqa: E402

N, BATCH, SEQ = 16, 4, 6
GRID = (0.0, 0.5, 1.0, 1.5, 2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is several times faster than two contending ones, and the
    numbers compared are computed in the same process either way. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 40, (N, SEQ), generator=g)
    labels = torch.randint(0, 3, (N,), generator=g)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(N)]


def make_opt(kind: str, model: torch.nn.Module) -> xsam.SAMFamily:
    if kind == "sam":
        return xsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.5, momentum=0.9)
    return xsam.XSAM(
        model.parameters(), torch.optim.SGD, rho=0.1, alpha="auto", alpha_every=2,
        alpha_grid=GRID, lr=0.5, momentum=0.9,
    )  # fmt: skip


class Sequential(SAMTrainer):
    """The data in order, so the reference can replay it; counts forward-only calls."""

    no_grad_calls = 0

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(self.train_dataset)

    def compute_loss(self, model, inputs, *args, **kwargs):
        if not torch.is_grad_enabled():
            self.no_grad_calls += 1
        return super().compute_loss(model, inputs, *args, **kwargs)


def trainer_div(trainer, accum):
    return 1 if trainer.model_accepts_loss_kwargs else accum


def train(kind, *, accum=1, bf16=False, max_grad_norm=0.0, via="optimizers", tmp_path):
    model = make_model()
    backwards = []
    model.classifier.weight.register_hook(lambda g: backwards.append(1))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=accum, num_train_epochs=1, bf16=bf16, use_cpu=True,
        max_grad_norm=max_grad_norm, lr_scheduler_type="constant", logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        learning_rate=0.5, optim="sgd", weight_decay=0.0,
    )  # fmt: skip
    if via == "optimizers":
        extra = {"optimizers": (make_opt(kind, model), None)}
    else:  # the base optimizer from TrainingArguments(optim="sgd", learning_rate=0.5)
        settings = {"rho": 0.1} if kind == "sam" else {"rho": 0.1, "alpha": "auto"}
        if kind == "xsam":
            settings.update(alpha_every=2, alpha_grid=GRID)
        extra = {"sam": kind, "sam_kwargs": settings}
    trainer = Sequential(model=model, args=args, train_dataset=dataset(), **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return model, trainer, len(backwards)


def reference(kind, *, accum=1, bf16=False, max_grad_norm=0.0, momentum=0.9, div=None):
    """The same updates by hand. ``div``: what the Trainer divides each micro-batch's loss by.
    It does not divide when the model accepts loss kwargs (it passes num_items_in_batch and
    trusts the model to normalise), which BERT's classification loss then ignores: with
    accumulation the Trainer's gradient is the sum of the micro-batch means. SAMTrainer keeps
    the Trainer's convention, whatever it is; the reference mirrors it."""
    div = accum if div is None else div
    model = make_model()
    model.train()
    opt = make_opt(kind, model)
    if momentum != 0.9:
        for g in opt.param_groups:
            g["momentum"] = momentum
    data = dataset()
    batches = [data[i : i + BATCH] for i in range(0, N, BATCH)]
    clean = []
    for start in range(0, len(batches), accum):
        window = batches[start : start + accum]
        calls = []

        def closure(window=window, calls=calls):
            total = 0.0
            for b in window:
                ids = torch.stack([e["input_ids"] for e in b])
                labels = torch.stack([e["labels"] for e in b])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(input_ids=ids, labels=labels).loss
                loss = loss / div
                if torch.is_grad_enabled():
                    loss.backward()
                total = total + loss.detach()
            if torch.is_grad_enabled():
                calls.append(1)
                if max_grad_norm and len(calls) == opt.steps + 1:  # g_k: clips d (‖d‖ = ‖g_k‖)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            return total

        clean.append(float(opt.step(closure)))
    return model, opt, clean


def assert_same(model, ref, atol):
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), atol=atol, rtol=0, msg=name)


CASES = [
    (kind, accum, bf16) for kind in ("sam", "xsam") for accum in (1, 2) for bf16 in (False, True)
]


@pytest.mark.parametrize("kind,accum,bf16", CASES)
def test_trainer_equals_closure_reference(kind, accum, bf16, tmp_path):
    model, trainer, backwards = train(kind, accum=accum, bf16=bf16, tmp_path=tmp_path)
    ref, ref_opt, clean = reference(kind, accum=accum, bf16=bf16, div=trainer_div(trainer, accum))
    # fp32: sums in another order (the Trainer may normalise by the token count of the step);
    # bf16: autocast is the same, the fp32 master weights and optimizer arithmetic identical
    assert_same(model, ref, atol=1e-6 if not bf16 else 2e-5)
    sam = trainer.sam_optimizer
    updates = N // BATCH // accum
    assert sam.updates == ref_opt.updates == updates == trainer.state.global_step
    assert backwards == 2 * (N // BATCH)  # clean + one ascent pass per micro-batch, no more
    if kind == "xsam":  # searched at updates 1, 3: one forward-only call per α and micro-batch
        assert trainer.no_grad_calls == ((updates + 1) // 2) * len(GRID) * accum
    else:
        assert trainer.no_grad_calls == 0
    # the logged loss is the clean loss (the Trainer logs the step's mean over micro-batches)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert logged == pytest.approx(clean, abs=1e-4)


def test_trainer_max_grad_norm_clips_d(tmp_path):
    model, trainer, _ = train("xsam", accum=2, max_grad_norm=0.05, tmp_path=tmp_path)
    div = trainer_div(trainer, 2)
    ref, _, _ = reference("xsam", accum=2, max_grad_norm=0.05, div=div)
    free, _, _ = reference("xsam", accum=2, div=div)
    assert_same(model, ref, atol=1e-6)
    assert max((a - b).abs().max() for a, b in zip(ref.parameters(), free.parameters())) > 1e-3


@pytest.mark.parametrize("kind", ["sam", "xsam"])
def test_trainer_sam_argument_wraps_the_configured_optimizer(kind, tmp_path):
    """sam='xsam': the base optimizer is TrainingArguments(optim='sgd', learning_rate=0.5), no
    momentum; nothing else in the script changes."""
    model, trainer, _ = train(kind, accum=2, via="sam", tmp_path=tmp_path)
    ref, _, _ = reference(kind, accum=2, momentum=0.0, div=trainer_div(trainer, 2))
    assert_same(model, ref, atol=1e-6)
    assert type(trainer.sam_optimizer) is (xsam.SAM if kind == "sam" else xsam.XSAM)


def test_trainer_refuses_a_plain_optimizer(tmp_path):
    model = make_model()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = SAMTrainer(
        model=model, args=args, train_dataset=dataset(),
        optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
    )  # fmt: skip
    with pytest.raises(TypeError, match="SAM-family optimizer"):
        trainer.train()
    with pytest.raises(ValueError, match="sam must be None"):
        SAMTrainer(model=model, args=args, sam="adam")


# ---------------------------------------------------------------------------- two processes
def _ddp_worker(out: str) -> None:
    """Run by torchrun (2 CPU processes, gloo): SAMTrainer with XSAM (α searched) under
    Accelerate's DDP; rank 0 saves the final weights, every rank its own checksum."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    model = make_model()
    args = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1, use_cpu=True,
        lr_scheduler_type="constant", save_strategy="no", report_to=[], disable_tqdm=True,
        ddp_backend="gloo", learning_rate=0.5, optim="sgd", max_grad_norm=0.0,
    )  # fmt: skip
    trainer = Sequential(
        model=model, args=args, train_dataset=dataset(), optimizers=(make_opt("xsam", model), None),
        perturbation="global",  # "local" is the default under DDP (tests/test_frameworks_ddp.py)
    )  # fmt: skip
    trainer.train()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    rank = dist.get_rank()
    # the Trainer's convention: with loss kwargs it multiplies each rank's loss by the number of
    # processes (it expects the model to have divided by the global token count)
    scale = 2 if args.average_tokens_across_devices and trainer.model_accepts_loss_kwargs else 1
    record = {"flat": flat, "updates": trainer.sam_optimizer.updates, "scale": scale}
    torch.save(record, f"{out}/rank{rank}.pt")
    if rank == 0:
        torch.save(model.state_dict(), f"{out}/weights.pt")


@pytest.mark.slow
def test_trainer_ddp_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    """Global perturbation under DDP: every backward is all-reduced (the mean of the per-rank
    gradients) and the α probes' losses are averaged over the ranks, so the update equals one
    process on the concatenated batch (rank r takes micro-batches r, r + 2, ...), and the
    replicas agree."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", __file__,
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["flat"], ranks[1]["flat"])  # replicas identical
    assert ranks[0]["updates"] == N // (2 * BATCH)
    # one process, global batches of 2 * BATCH consecutive examples, the Trainer's loss scale
    model = make_model()
    opt = make_opt("xsam", model)
    scale = ranks[0]["scale"]
    data = dataset()
    for start in range(0, N, 2 * BATCH):
        ids = torch.stack([e["input_ids"] for e in data[start : start + 2 * BATCH]])
        labels = torch.stack([e["labels"] for e in data[start : start + 2 * BATCH]])

        def closure(ids=ids, labels=labels):
            loss = model(input_ids=ids, labels=labels).loss * scale
            if torch.is_grad_enabled():
                loss.backward()
            return loss

        opt.step(closure)
    got = torch.load(tmp_path / "weights.pt")
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.detach(), atol=1e-6, rtol=0, msg=name)


if __name__ == "__main__":  # the torchrun worker of the test above
    _ddp_worker(sys.argv[1])
