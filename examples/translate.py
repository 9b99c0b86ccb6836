"""PBT on machine translation: a tiny ``torch.nn.Transformer`` on a synthetic language pair.

The "source language" is random sentences of 4 to 12 words from a 24-word vocabulary; the
"target language" says the same sentence backwards with every word replaced by its translation
(a fixed mapping), so a model must learn both a lexicon and a reordering. Everything is
generated in code from fixed seeds: nothing is downloaded.

The hyperparameters are the ones the paper tuned on WMT: learning rate, attention dropout,
layer (residual) dropout and ReLU dropout. The metric is corpus BLEU (sacrebleu) of greedy
translations of 200 held-out sentences: the non-differentiable metric the paper optimised
directly.

Run:  python examples/translate.py [--population 8] [--intervals 15]
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import sacrebleu
import torch
from _cli import EXPLORES, at_least_one, guard, where
from _cli import parser as example_parser
from torch import nn

import poptune as pt
from poptune.integrations.torch import apply_hparams, load_state, save_state, seed_everything

SPACE = {
    "lr": pt.LogUniform(1e-4, 1e-2),
    "attention_dropout": pt.Uniform(0.0, 0.5),
    "layer_dropout": pt.Uniform(0.0, 0.5),
    "relu_dropout": pt.Uniform(0.0, 0.5),
}
WORDS = 24
PAD, BOS, EOS = 0, 1, 2
SOURCE = [f"s{i}" for i in range(WORDS)]
TARGET = [f"t{i}" for i in range(WORDS)]
LEXICON = [(7 * i + 3) % WORDS for i in range(WORDS)]  # source word i -> target word LEXICON[i]


def translate_reference(sentence: list[int]) -> list[int]:
    """The true translation: reversed, word by word through the lexicon."""
    return [LEXICON[w] for w in reversed(sentence)]


@functools.cache
def corpus(split: str, size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(source sentences, target sentences) of a split, always the same."""
    generator = torch.Generator().manual_seed({"train": 0, "test": 1}[split])
    sources = []
    for _ in range(size):
        length = int(torch.randint(4, 13, (1,), generator=generator))
        sources.append(torch.randint(0, WORDS, (length,), generator=generator).tolist())
    return sources, [translate_reference(s) for s in sources]


def batch(sentences: list[list[int]], bos: bool) -> torch.Tensor:
    """Token ids (words shifted past PAD/BOS/EOS), EOS-terminated, padded, BOS first if asked."""
    rows = [([BOS] if bos else []) + [w + 3 for w in s] + [EOS] for s in sentences]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


class Translator(pt.Trainable):
    """A 2+2-layer Transformer (d_model 64); one interval is ``updates`` Adam steps."""

    updates = 40
    batch_size = 64
    held_out = 200  # sentences scored by evaluate (the benchmark's CI smoke scores fewer)

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        torch.set_num_threads(1)
        self.rng = seed_everything(seed)
        self.embed_source = nn.Embedding(WORDS + 3, 64, padding_idx=PAD)
        self.embed_target = nn.Embedding(WORDS + 3, 64, padding_idx=PAD)
        self.position = nn.Embedding(20, 64)
        with warnings.catch_warnings():  # nested tensors are only a fast path, not needed here
            warnings.filterwarnings("ignore", message=".*nested tensors.*")
            self.transformer = nn.Transformer(
                d_model=64,
                nhead=4,
                num_encoder_layers=2,
                num_decoder_layers=2,
                dim_feedforward=128,
                batch_first=True,
            )
        self.transformer.encoder.enable_nested_tensor = False
        self.transformer.encoder.use_nested_tensor = False
        self.output = nn.Linear(64, WORDS + 3)
        self.model = nn.ModuleDict(
            {
                "embed_source": self.embed_source,
                "embed_target": self.embed_target,
                "position": self.position,
                "transformer": self.transformer,
                "output": self.output,
            }
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=hparams["lr"])

    def _set_dropout(self, hparams: Mapping[str, Any]) -> None:
        """The three kinds of dropout the paper tuned, set on the existing modules."""
        for layer in [*self.transformer.encoder.layers, *self.transformer.decoder.layers]:
            for name, module in layer.named_children():
                if isinstance(module, nn.MultiheadAttention):
                    module.dropout = float(hparams["attention_dropout"])
                elif name == "dropout":  # after the feed-forward ReLU
                    module.p = float(hparams["relu_dropout"])
                elif name.startswith("dropout"):  # on the residual branches
                    module.p = float(hparams["layer_dropout"])

    def _embed(self, tokens: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1]).unsqueeze(0)
        return table(tokens) + self.position(positions)

    def _logits(self, source: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        width = target_in.shape[1]
        mask = torch.triu(torch.ones(width, width, dtype=torch.bool), diagonal=1)
        hidden = self.transformer(
            self._embed(source, self.embed_source),
            self._embed(target_in, self.embed_target),
            tgt_mask=mask,
            src_key_padding_mask=source == PAD,
            tgt_key_padding_mask=target_in == PAD,
            memory_key_padding_mask=source == PAD,
        )
        return self.output(hidden)

    def reseed(self, seed: int) -> None:
        """Each interval draws from its own seed, whether this instance was kept or rebuilt (so a
        synchronous run is the same for any number of workers)."""
        super().reseed(seed)  # torch's global generator (dropout, initialisation)
        self.rng = torch.Generator().manual_seed(seed)

    def train(self, hparams: Mapping[str, Any]) -> None:
        """``updates`` steps of teacher-forced cross-entropy with the current hparams."""
        apply_hparams(self.optimizer, hparams)
        self._set_dropout(hparams)
        self.model.train()
        sources, targets = corpus("train", 4000)
        for _ in range(int(hparams.get("updates", self.updates))):  # --updates, recorded
            rows = torch.randint(0, len(sources), (self.batch_size,), generator=self.rng).tolist()
            source = batch([sources[r] for r in rows], bos=False)
            target = batch([targets[r] for r in rows], bos=True)
            logits = self._logits(source, target[:, :-1])
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1), ignore_index=PAD
            )
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()

    @torch.no_grad()
    def translate(self, sentences: list[list[int]]) -> list[list[int]]:
        """Greedy decoding, at most 14 words."""
        self.model.eval()
        source = batch(sentences, bos=False)
        output = torch.full((len(sentences), 1), BOS)
        for _ in range(15):
            next_token = self._logits(source, output)[:, -1].argmax(dim=-1, keepdim=True)
            output = torch.cat([output, next_token], dim=1)
        result = []
        for row in output[:, 1:].tolist():
            words = []
            for token in row:
                if token == EOS:
                    break
                if token > EOS:
                    words.append(token - 3)
            result.append(words)
        return result

    def evaluate(self) -> dict[str, float]:
        """Corpus BLEU of greedy translations of the ``held_out`` (200) held-out sentences."""
        sources, targets = corpus("test", self.held_out)
        hypotheses = [" ".join(TARGET[w] for w in s) for s in self.translate(sources)]
        references = [" ".join(TARGET[w] for w in t) for t in targets]
        bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none")
        exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)
        return {"bleu": float(bleu.score), "exact": exact}

    def state_dict(self) -> dict[str, Any]:
        """Weights and Adam moments."""
        return save_state(self.model, self.optimizer)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a (possibly better member's) model."""
        load_state(state, self.model, self.optimizer)


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best model and its schedule."""
    parser = example_parser(
        "PBT on a synthetic translation task", name="translate", population=8, intervals=15
    )
    parser.add_argument("--updates", type=int, default=Translator.updates)
    parser.add_argument("--random-search", action="store_true", help="exploit=None baseline")
    args = parser.parse_args(argv)
    at_least_one(parser, updates=args.updates)
    result = pt.run(
        Translator,
        space={**SPACE, "updates": args.updates},  # fixed, recorded: a resume trains as many
        metric="bleu",
        mode="max",
        population=args.population,
        intervals=args.intervals,
        workers=args.workers,
        exploit=None if args.random_search else pt.Truncation(0.25),
        explore=EXPLORES[args.explore](),
        name=args.name or ("translate-random-search" if args.random_search else "translate"),
        storage=args.storage,
        seed=args.seed,
        sync=args.sync,
        progress=not args.no_progress,
    )
    best = result.best
    print(f"\nbest member {best.member}: BLEU {best.score:.1f}, exact {best.metrics['exact']:.0%}")
    for entry in result.schedule():
        h = entry.hparams
        print(
            f"  {entry.step:3d}: member {entry.member}  lr={h['lr']:.3g}  "
            f"attention={h['attention_dropout']:.2f}  layer={h['layer_dropout']:.2f}  "
            f"relu={h['relu_dropout']:.2f}  BLEU={entry.score:.1f}"
        )
    where(result)
    return result


if __name__ == "__main__":
    guard(main)
