"""Score a trained BiosERC classifier on labelled conversations: weighted F1 (the paper's metric), per class and
confusion matrix.

    python -m bioserc.training.evaluate runs/meld-minilm/best ../shared/data/raw/meld/meld.valid.json \
        --bios out/meld-valid-bios/bios.jsonl --output runs/meld-minilm/valid_report.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from bioserc.metrics import classification_report
from bioserc.models import BiosercBert, Prediction, load_bios, missing_bios, predict
from bioserc.models.collate import BioKey
from bioserc.readers import read_conversations
from bioserc.schema import Conversation


def score(conversations: Sequence[Conversation], predictions: Sequence[Prediction], labels: Sequence[str]) -> dict:
    """The classification report over the utterances that have a gold label (unlabelled ones are skipped)."""
    gold = {(c.id, u.index): u.label for c in conversations for u in c.utterances if u.label is not None}
    pairs = [(gold[p.conversation_id, p.index], p.label) for p in predictions if (p.conversation_id, p.index) in gold]
    if not pairs:
        raise ValueError("none of the conversations has gold labels to score against")
    y_true, y_pred = zip(*pairs, strict=True)
    return classification_report(y_true, y_pred, labels)


def evaluate(model_dir: str, data: str | Sequence[str] | Sequence[Conversation],
             bios: str | Sequence[str] | Mapping[BioKey, str] | None = None, batch_size: int = 8,
             device: str = "cpu", progress: bool = False) -> dict:
    """Load `model_dir` (a `save_pretrained` folder), predict `data` and return the report.

    Args:
        model_dir: trained model folder, e.g. `<output_dir>/best`.
        data: input files/directories/globs (any supported format) or already-read conversations.
        bios: bios.jsonl path(s) or a {(conversation_id, speaker): bio} mapping; None when the model uses no bios.
    Returns:
        `bioserc.metrics.classification_report` plus `model_dir` and `bios_missing` (speakers scored with no bio).
    """
    model = BiosercBert.from_pretrained(model_dir, device=device)
    if isinstance(data, str) or (data and isinstance(data[0], str)):
        data = read_conversations(data)
    if isinstance(bios, str) or (isinstance(bios, Sequence) and not isinstance(bios, Mapping)):
        bios = load_bios(bios)
    predictions = predict(model, data, bios, batch_size=batch_size, progress=progress)
    report = score(data, predictions, model.config.labels)
    uses_bios = model.config.bio_mode != "none"
    return {**report, "model_dir": model_dir, "bios_missing": len(missing_bios(data, bios)) if uses_bios else 0}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, dest="model_dir", help="trained model folder (<output_dir>/best)")
    parser.add_argument("--data", required=True, nargs="+", help="labelled conversations: files, directories, globs")
    parser.add_argument("--bios", nargs="*", default=None, help="bios.jsonl file(s) from `bioserc bios`")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--output", help="also write the report to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    report = evaluate(args.model_dir, args.data, args.bios, args.batch_size, args.device, progress=True)
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(f"weighted F1 {report['weighted_f1']:.2f} over {report['n']} utterances", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
