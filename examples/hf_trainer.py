"""XSAM with the Hugging Face Trainer: SAMTrainer in place of Trainer.

A tiny BERT built from a config (no download) on a synthetic task (is token 1 in the sequence?).
The TrainingArguments apply unchanged: gradient_accumulation_steps, bf16/fp16, max_grad_norm
(applied to d); the logged loss is the clean loss. Two ways to ask for XSAM:
optimizers=(xsam.XSAM(...), None), or sam="xsam" with sam_kwargs, which wraps the optimizer the
arguments configure (here optim="sgd"). Needs `pip install "torch-xsam[transformers]"`.

    python examples/hf_trainer.py [--smoke] [--bf16]
"""

import argparse
import tempfile

import torch
import transformers

from xsam.integrations.transformers import SAMTrainer


def make_dataset(n, seq=8, vocab=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, seq), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[labels == 1, torch.randint(0, seq, (int(labels.sum()),), generator=g)] = 1
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or GPU)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    data = make_dataset(64 if args.smoke else 1024)
    with tempfile.TemporaryDirectory() as out:
        training_args = transformers.TrainingArguments(
            output_dir=out, num_train_epochs=1 if args.smoke else args.epochs,
            per_device_train_batch_size=8, gradient_accumulation_steps=2, max_grad_norm=1.0,
            optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", bf16=args.bf16,
            logging_steps=2, save_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
        )  # fmt: skip
        trainer = SAMTrainer(
            model=model, args=training_args, train_dataset=data,
            sam="xsam", sam_kwargs={"rho": 0.1, "alpha": "auto", "alpha_every": 8},
        )  # fmt: skip
        result = trainer.train()
    opt = trainer.sam_optimizer
    print(f"updates {opt.updates}, alpha {opt.alpha:.2f}")
    print(f"final_loss={result.training_loss:.6f}")


if __name__ == "__main__":
    main()
