"""Which conversation-level layer reads a long call best: BiosercBert's head trained on frozen encoder features.

    python bench/context_probe.py --train ../shared/data/raw/iemocap/iemocap.train.json \
        --dev ../shared/data/raw/iemocap/iemocap.valid.json --label-set iemocap --out docs/bench/context_probe.json

Fine-tuning the encoder takes ~1 h a seed here; this takes ~1 min. Each utterance is encoded once by the frozen
encoder (mean-pooled, `--max-length` tokens), and only the classifier above it is trained (one call a step,
inverse-frequency class weights N / (K N_c), label smoothing, clipping), for every variant and seed; reported is
each run's best dev W-F1 over `--epochs` and its curve. Variants: `transformer` and `gru` (the model's `context`
settings), `gru, no positions` (`positions: false`) and `gru + transformer` (the BiGRU's output read by the
Transformer layer). A frozen encoder ranks the layers; the fine-tuned numbers come from `bench/sweep.py`.
`--out` is written after every run and read back on the next call, so an interrupted probe resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Sequence

import torch
from report_io import emit
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from bioserc.embedded import resolve_model
from bioserc.labels import get_label_set
from bioserc.metrics import weighted_f1
from bioserc.models.bigru import BiGRU
from bioserc.models.bioserc_bert import BiosercBert, BiosercBertConfig
from bioserc.readers import read_conversations
from bioserc.schema import Conversation


Call = tuple[torch.Tensor, torch.Tensor, list[str]]  # (L, H) features, (1, L) speaker ids, gold labels


class FrozenFeatures(BiosercBert):
    """The classifier with its encoder replaced by precomputed utterance vectors (passed as `input_ids`)."""

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        return input_ids


class GruThenTransformer(FrozenFeatures):
    def __init__(self, config: BiosercBertConfig, encoder: nn.Module) -> None:
        super().__init__(config, encoder)
        self.gru = BiGRU(encoder.config.hidden_size)

    def contextualize(self, utt: torch.Tensor, utt_mask: torch.Tensor) -> torch.Tensor:
        return super().contextualize(utt + self.gru(utt, utt_mask), utt_mask)


VARIANTS = {  # name: (model class, context, positions)
    "transformer": (FrozenFeatures, "transformer", True),
    "gru": (FrozenFeatures, "gru", True),
    "gru, no positions": (FrozenFeatures, "gru", False),
    "gru + transformer": (GruThenTransformer, "transformer", True),
}


def features(convs: Sequence[Conversation], tokenizer, encoder: nn.Module, max_length: int) -> list[Call]:
    calls = []
    for conv in convs:
        batch = tokenizer(
            [u.text for u in conv.utterances],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.no_grad():
            states = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        speaker = {s: i for i, s in enumerate(conv.speakers)}
        calls.append(
            (
                (states * mask).sum(1) / mask.sum(1),
                torch.tensor([[speaker[u.speaker] for u in conv.utterances]]),
                [u.label for u in conv.utterances],
            )
        )
    return calls


def logits(model: BiosercBert, call: Call) -> torch.Tensor:
    x, speakers, _ = call
    n = len(x)
    return model(x, None, None, torch.arange(n), torch.ones(1, n, dtype=torch.bool), speakers)[0]


def train_one(variant: str, seed: int, train: list[Call], dev: list[Call], encoder_path: str, args) -> dict:
    cls, context, positions = VARIANTS[variant]
    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = BiosercBertConfig(
        encoder=encoder_path,
        label_set=args.label_set,
        window=0,
        bio_mode="none",
        context=context,
        positions=positions,
        encoder_config=AutoConfig.from_pretrained(encoder_path),
    )
    model = cls(config, AutoModel.from_config(config.encoder_config))
    model.encoder.requires_grad_(False)
    labels = config.labels
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-3)
    gold = [y for *_, ys in train for y in ys if y in labels]
    counts = torch.tensor([max(gold.count(y), 1) for y in labels], dtype=torch.float)
    loss_fn = nn.CrossEntropyLoss(weight=len(gold) / (len(labels) * counts), ignore_index=-100, label_smoothing=0.1)
    targets = [torch.tensor([labels.index(y) if y in labels else -100 for y in ys]) for *_, ys in train]
    curve = []
    for _ in range(args.epochs):
        model.train()
        for i in rng.sample(range(len(train)), len(train)):
            loss = loss_fn(logits(model, train[i]), targets[i])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        model.eval()
        pred, want = [], []
        with torch.no_grad():
            for call in dev:
                guess = logits(model, call).argmax(-1).tolist()
                pred += [labels[g] for g, y in zip(guess, call[2], strict=True) if y in labels]
                want += [y for y in call[2] if y in labels]
        curve.append(round(weighted_f1(want, pred, labels), 2))
    return {"best": max(curve), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--label-set", default="iemocap")
    parser.add_argument("--encoder", default="minilm", help="embedded name or local folder")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    get_label_set(args.label_set)  # fail on a wrong name before the encoding
    path = resolve_model(args.encoder)
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    start = time.perf_counter()
    train = features(list(read_conversations(args.train)), tokenizer, encoder, args.max_length)
    dev = features(list(read_conversations(args.dev)), tokenizer, encoder, args.max_length)
    report = {"train": args.train, "dev": args.dev, "encoder": args.encoder, "epochs": args.epochs, "variants": {}}
    if args.out and os.path.exists(args.out):  # resume: keep the runs an earlier, interrupted call finished
        with open(args.out, encoding="utf-8") as fh:
            report["variants"] = json.load(fh)["variants"]
    report["features_s"] = round(time.perf_counter() - start, 1)
    for variant in args.variants:
        runs = report["variants"].get(variant, {}).get("seeds", {})
        for seed in args.seeds:
            if str(seed) in runs:
                continue
            runs[str(seed)] = train_one(variant, seed, train, dev, path, args)
            print(variant, seed, runs[str(seed)]["best"], flush=True)
            best = [r["best"] for r in runs.values()]
            report["variants"][variant] = {
                "mean": round(statistics.mean(best), 2),
                "std": round(statistics.stdev(best), 2) if len(best) > 1 else 0.0,
                "seeds": runs,
            }
            if args.out:  # after every run, so a killed probe loses one run at most
                with open(args.out, "w", encoding="utf-8") as fh:
                    json.dump(report, fh, indent=2)
    emit(report, args.out)


if __name__ == "__main__":
    main()
