"""PBT of a Hugging Face Trainer: a tiny BERT classifier on a synthetic text task.

Nothing is downloaded: the model is built from a ``BertConfig`` (2 layers, hidden size 32)
and the "text" is integer token ids drawn from a seeded rule. A sentence is 15 tokens after a
[CLS] token; its label says whether it holds more tokens of the first half of the vocabulary than
of the second, unless the marker token 3 occurs, which flips it. Words must be counted and the
marker found, so accuracy climbs from 0.5 as the classifier learns; how fast depends on the
learning rate and weight decay, which PBT tunes while the trainers run. Each member is one
``Trainer`` trained with one ``trainer.train()`` call; each evaluation is one PBT interval.

Run:  python examples/hf_text.py [--population 4] [--intervals 8] [--workers 2]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # build everything locally, never download

import numpy as np
import torch
from _cli import guard, report, run_options
from _cli import parser as example_parser
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

import poptune as pt
from poptune.integrations import transformers as pt_hf

VOCAB = 64  # ids 0-3 are [PAD], [CLS], [SEP] and the marker
LENGTH = 16
MARKER = 3

SPACE = {
    "learning_rate": pt.LogUniform(1e-4, 3e-2),
    "weight_decay": pt.Uniform(0.0, 0.3),
    "eval_steps": 25,  # fixed: the interval, in optimizer steps
    "batch_size": 32,  # fixed
}


class Sentences(torch.utils.data.Dataset):
    """Synthetic sentences of token ids with their labels (see the module's docstring)."""

    def __init__(self, size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        words = rng.integers(MARKER + 1, VOCAB, size=(size, LENGTH - 1))
        marker = rng.random(size) < 0.3
        words[marker, rng.integers(0, LENGTH - 1, size=int(marker.sum()))] = MARKER
        middle = (MARKER + 1 + VOCAB) // 2
        first_half = ((words > MARKER) & (words < middle)).sum(axis=1)
        second_half = (words >= middle).sum(axis=1)
        labels = (first_half > second_half) ^ (words == MARKER).any(axis=1)
        self.input_ids = torch.from_numpy(
            np.concatenate([np.ones((size, 1), dtype=np.int64), words], axis=1)
        )
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": torch.ones(LENGTH, dtype=torch.int64),
            "labels": self.labels[index],
        }


def data(train_size: int = 2048, eval_size: int = 512) -> tuple[Sentences, Sentences]:
    """The training and evaluation sentences (the same for every member)."""
    return Sentences(train_size, seed=0), Sentences(eval_size, seed=1)


def tiny_bert() -> BertForSequenceClassification:
    """A 2-layer BERT classifier with hidden size 32, built from a config (no download)."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def accuracy(prediction: Any) -> dict[str, float]:
    """``compute_metrics``: the share of sentences classified right (logged as eval_accuracy)."""
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def arguments(hparams: dict[str, Any], seed: int, **overrides: Any) -> TrainingArguments:
    """TrainingArguments of one member: evaluate every ``eval_steps`` steps, on the CPU, quietly."""
    settings: dict[str, Any] = dict(
        output_dir=os.path.join(tempfile.gettempdir(), "poptune-hf-text"),
        eval_strategy="steps",
        eval_steps=hparams["eval_steps"],
        per_device_train_batch_size=hparams["batch_size"],
        per_device_eval_batch_size=256,
        learning_rate=hparams["learning_rate"],
        weight_decay=hparams["weight_decay"],
        lr_scheduler_type="constant",
        seed=seed,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def build_trainer(hparams: dict[str, Any], seed: int) -> Trainer:
    """One member's trainer (the factory ``pt_hf.run`` calls with its hparams and seed)."""
    torch.set_num_threads(1)
    train, val = data()
    trainer = Trainer(
        model=tiny_bert(),
        args=arguments(hparams, seed),
        train_dataset=train,
        eval_dataset=val,
        compute_metrics=accuracy,
    )
    trainer.remove_callback(PrinterCallback)  # poptune shows progress; no log line per eval
    return trainer


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best member and its schedule."""
    parser = example_parser(
        "PBT of a tiny BERT with the HF Trainer", name="hf-text", population=4, intervals=8
    )
    args = parser.parse_args(argv)

    result = pt_hf.run(
        build_trainer,
        space=SPACE,
        metric="eval_accuracy",
        **run_options(args),
    )
    report(result, "accuracy")
    return result


if __name__ == "__main__":
    guard(main)
