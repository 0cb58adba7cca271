"""Score a trained BiosERC classifier on labelled conversations: weighted F1 (the paper's metric), per class and
confusion matrix.

    bioserc evaluate --model serving_artifacts/default --data ../shared/data/raw/meld/meld.valid.json
    bioserc evaluate --model emorynlp --data ../shared/data/raw/emorynlp/emorynlp.valid.json   # shipped, by name
    bioserc evaluate --model runs/meld-minilm/best --data meld.valid.json --bios out/meld-valid-bios/bios.jsonl \\
        --output runs/meld-minilm/valid_report.json
    bioserc evaluate --model runs/meld-smollm2-lora/adapter --data meld.valid.json --mode generate --json
    bioserc evaluate --model serving_artifacts/smollm2-merged-onnx --data meld.valid.json --scoring mean

Prints a per-class table (precision, recall, F1, support), weighted F1, macro F1 and accuracy, and the confusion
matrix (rows: gold label, columns: predicted label); --json prints the JSON report instead, --output also writes it
to a file. The folder's manifest picks the model and is verified first (a missing folder, an unlisted or altered file
or a label order that disagrees with config.json is an `error:` line and exit status 2, as is unreadable data): a
BERT classifier (`best/` or its ONNX export), or an LLM, either a LoRA adapter from `train_llm` (loaded on the base
model its manifest names, or --base-model), a merged folder from `merge_llm` or its ONNX export (`bioserc export
onnx-llm`, run on ONNX Runtime).
A BERT classifier trained on scores/latent profiles reads the vectors of the --bios rows (`bioserc bios --profile`);
a row of another profile or vector size is such an error too, naming the file and line.
LLMs are scored by label likelihood (--mode score, always a valid label) or by free generation as in the paper
(--mode generate): answers that are not exactly a label count as wrong, as their own "<invalid>" class, and the
report adds their count and rate. --scoring picks the label score: the answer's summed token log-probs (sum, which
favours labels of few tokens), their mean (mean) or its first token's (first, for labels whose first tokens differ).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from bioserc.artifacts import ArtifactError, artifact_file, read_manifest, resolve_model_arg, shipped_names
from bioserc.errors import FILE_ERRORS
from bioserc.metrics import classification_report, render_report
from bioserc.models import Prediction, load_bios, missing_bios
from bioserc.models.bioserc_bert import CONFIG_FILE
from bioserc.models.classifier import load_classifier
from bioserc.models.collate import Bio, BioKey
from bioserc.models.int8_graph import MODES as INT8_MODES
from bioserc.readers import read_conversations
from bioserc.schema import Conversation
from bioserc.training.config_files import HelpFormatter


logger = logging.getLogger(__name__)


def score(conversations: Sequence[Conversation], predictions: Sequence[Prediction], labels: Sequence[str]) -> dict:
    """The classification report over the utterances that have a gold label (unlabelled ones are skipped)."""
    gold = {(c.id, u.index): u.label for c in conversations for u in c.utterances if u.label is not None}
    pairs = [(gold[p.conversation_id, p.index], p.label) for p in predictions if (p.conversation_id, p.index) in gold]
    if not pairs:
        raise ValueError("none of the conversations has gold labels to score against")
    y_true, y_pred = zip(*pairs, strict=True)
    return classification_report(y_true, y_pred, labels)


def bio_profile(model_dir: str, manifest: dict[str, Any]) -> tuple[str, int | None]:
    """The profile (and vector size) a BiosERC-BERT artifact's bios must have: its config.json's, or text for a
    folder written before profiles existed."""
    with open(artifact_file(model_dir, manifest, CONFIG_FILE), encoding="utf-8") as fh:
        config = json.load(fh)
    return config.get("profile", "text"), config.get("profile_dim") or None


def llm_report(
    classifier,
    conversations: Sequence[Conversation],
    bios: Mapping[BioKey, str] | None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """The report of a `bioserc.models.llm_scoring.LlmClassifier` in its mode; generate mode adds `invalid` (count
    of labelled utterances whose answer was no label) and `invalid_rate`, and "<invalid>" joins the label list."""
    from bioserc.models.llm_scoring import INVALID

    if classifier.mode == "score":
        return score(conversations, classifier.predict(conversations, bios, batch_size, progress), classifier.labels)
    generated = classifier.generate(conversations, bios, batch_size, progress)
    report = score(conversations, [g.prediction for g in generated], [*classifier.labels, INVALID])
    gold = {(c.id, u.index) for c in conversations for u in c.utterances if u.label is not None}
    invalid = sum(not g.valid for g in generated if (g.prediction.conversation_id, g.prediction.index) in gold)
    return {**report, "invalid": invalid, "invalid_rate": invalid / report["n"]}


def evaluate(
    model_dir: str,
    data: str | Sequence[str] | Sequence[Conversation],
    bios: str | Sequence[str] | Mapping[BioKey, Bio] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = False,
    mode: str = "score",
    base_model: str | None = None,
    threads: int | None = None,
    scoring: str = "sum",
    int8: str = "auto",
) -> dict:
    """Load `model_dir` (verified against its manifest), predict `data` and return the report.

    Args:
        model_dir: a classifier artifact: training's `<output_dir>/best`, an ONNX export, an LLM adapter, a merged
            LLM or its ONNX export. Its manifest, checksums and label order are checked before any input is read.
        data: input files/directories/globs (any supported format) or already-read conversations.
        bios: bios.jsonl path(s) or a {(conversation_id, speaker): bio} mapping (bio text, or the vector of a
            scores/latent profile model); None when the model uses no bios.
        mode: LLMs only: "score" (label likelihoods) or "generate" (free generation, exact match).
        base_model: LLM adapters only: the base model folder, if not the one its manifest names.
        threads: CPU threads for inference (`load_classifier`); None: every CPU this process may use.
        scoring: LLMs in score mode: "sum", "mean" or "first" (`bioserc.models.llm_scoring`).
        int8: ONNX BERT classifiers: "auto", "on" or "off" (`load_classifier`).
    Returns:
        `bioserc.metrics.classification_report` plus `model_dir`, `mode`, `scoring` (None for a BERT classifier)
        and `bios_missing` (speakers scored with no bio); generate mode adds `invalid` and `invalid_rate`.
    Raises:
        ArtifactError: the folder, its manifest or a file it lists is missing, malformed or altered.
        ValueError / OSError: unreadable or unlabelled data, or options that do not fit the model.
    """
    from bioserc.artifacts import LLM_KINDS
    from bioserc.models.llm_scoring import MODES, SCORINGS

    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if scoring not in SCORINGS:
        raise ValueError(f"scoring {scoring!r} is not one of {SCORINGS}")
    manifest = read_manifest(model_dir)
    llm = manifest.get("kind") in LLM_KINDS
    if not llm and (mode != "score" or base_model or scoring != "sum"):
        raise ValueError(
            "--mode generate, --scoring and --base-model apply to LLM artifacts only; "
            f"{model_dir!r} holds an utterance classifier"
        )
    llm_options = {"mode": mode, "scoring": scoring} if llm else {}
    if base_model:  # LoRA adapters only: load_classifier refuses it for an onnx-llm export
        llm_options["base_model"] = base_model
    classifier = load_classifier(model_dir, device, threads, int8, **llm_options)
    if isinstance(data, str) or (data and isinstance(data[0], str)):
        data = read_conversations(data)
    if isinstance(bios, str) or (isinstance(bios, Sequence) and not isinstance(bios, Mapping)):
        bios = load_bios(bios) if llm else load_bios(bios, *bio_profile(model_dir, manifest))
    if llm:
        report = llm_report(classifier, data, bios, batch_size, progress)
    else:
        report = score(data, classifier.predict(data, bios, batch_size, progress=progress), classifier.labels)
    uses_bios = classifier.bio_mode != "none"
    if bios and not uses_bios:
        logger.warning("%s uses no bios (bio_mode none): the %d bios given are ignored", model_dir, len(bios))
    return {
        **report,
        "model_dir": model_dir,
        "mode": mode,
        "scoring": scoring if llm else None,
        "int8_compute": getattr(classifier, "int8", False),
        "bios_missing": len(missing_bios(data, bios)) if uses_bios else 0,
    }


def render(report: dict) -> str:
    """The report for a person: the model, per-class table, summary scores, confusion grid and any warnings."""
    scoring = f", scoring {report['scoring']}" if report.get("scoring") and report["mode"] == "score" else ""
    int8 = ", int8 compute" if report.get("int8_compute") else ""
    lines = [f"model: {report['model_dir']} (mode {report['mode']}{scoring}{int8})", "", render_report(report)]
    if "invalid" in report:
        lines.append(
            f"\n{report['invalid']} generated answers were no label ({100 * report['invalid_rate']:.1f}%); "
            "they count as wrong (column <invalid>)"
        )
    if report["bios_missing"]:
        lines.append(f"\n{report['bios_missing']} speaker(s) had no bio and were scored with an empty one")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bioserc evaluate", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        dest="model_dir",
        type=resolve_model_arg,
        help="classifier artifact: <output_dir>/best, an ONNX export, an LLM adapter, a merged LLM "
        "or its ONNX export; or the name of a classifier shipped with bioserc "
        f"({shipped_names()}; a local folder of that name wins)",
    )
    parser.add_argument("--data", required=True, nargs="+", help="labelled conversations: files, directories, globs")
    parser.add_argument(
        "--bios", nargs="*", default=[], help="bios.jsonl file(s) from `bioserc bios`, for models that use bios"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="conversations (BERT) or prompts (LLM) per batch")
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device (cpu, cuda, cuda:N) or, for ONNX exports, cpu / cuda / tensorrt / auto",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads for inference (ONNX Runtime intra-op threads, or torch's); 0: automatic, "
        "every CPU this process may use",
    )
    parser.add_argument(
        "--mode",
        choices=["score", "generate"],
        default="score",
        help="LLMs: label scoring (always a valid label) or free generation as in the paper",
    )
    parser.add_argument(
        "--scoring",
        choices=["sum", "mean", "first"],
        default="sum",
        help="LLMs, score mode: a label's score is its answer's summed token log-probs (favours short "
        "labels), their mean, or its first token's (labels must start with different tokens)",
    )
    parser.add_argument(
        "--int8",
        choices=INT8_MODES,
        default="auto",
        help="ONNX BERT classifiers: auto = the int8-compute encoder where the model is calibrated for it and "
        "the CPU has exact int8 dot products (VNNI, AMX); on = insist; off = the shipped graph",
    )
    parser.add_argument("--base-model", help="LLM adapters: base model folder, if not the one in the manifest")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.add_argument("--output", help="also write the JSON report to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the report; 2 with one `error:` line for a bad artifact, bad data or unusable options."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be 0 (automatic) or more, got {args.threads}")
    try:
        report = evaluate(
            args.model_dir,
            args.data,
            args.bios,
            args.batch_size,
            args.device,
            progress=True,
            mode=args.mode,
            base_model=args.base_model,
            threads=args.threads or None,
            scoring=args.scoring,
            int8=args.int8,
        )
        text = json.dumps(report, indent=2)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
    except (ArtifactError, *FILE_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(f"weighted F1 {report['weighted_f1']:.2f} over {report['n']} utterances", file=sys.stderr)
    print(text if args.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
