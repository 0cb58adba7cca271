"""The short model card (README.md) every classifier artifact carries, written from what the export knows.

It is generated, not hand-written, so that it cannot drift from the files it describes, and it is written before the
manifest so that its checksum is verified like every other file. It opens with the Hugging Face model-card metadata
(YAML front matter: library, tags, dataset, base model and the dev weighted F1 as a model-index result), so the Hub
and other tools can index the folder as they index any model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml


CARD_FILE = "README.md"
# Hub ids of the embedded encoders (bioserc.embedded), for `base_model`; a local encoder folder has none to name.
BASE_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
DATASET_NAMES = {"meld": "MELD", "emorynlp": "EmoryNLP", "iemocap": "IEMOCAP"}


def _read_json(directory: str, name: str) -> dict[str, Any]:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def front_matter(fields: dict[str, Any], encoder: str | None, weighted_f1: float | None, precision: str) -> str:
    """The card's YAML metadata block, between `---` lines."""
    label_set = fields["label_set"]
    meta: dict[str, Any] = {
        "library_name": "bioserc",
        "pipeline_tag": "text-classification",
        "tags": ["emotion-recognition-in-conversation", "bioserc", "onnx", precision,
                 f"bio-mode-{fields['bio_mode']}"],
        "datasets": [label_set],
        "metrics": ["f1"],
    }
    if encoder in BASE_MODELS:
        meta["base_model"] = BASE_MODELS[encoder]
    if weighted_f1 is not None:
        meta["model-index"] = [{
            "name": f"bioserc-bert-{label_set}",
            "results": [{"task": {"type": "text-classification", "name": "Emotion recognition in conversation"},
                         "dataset": {"name": DATASET_NAMES.get(label_set, label_set), "type": label_set,
                                     "split": "validation"},
                         "metrics": [{"type": "f1", "name": "weighted F1 (source checkpoint)",
                                      "value": round(float(weighted_f1), 2)}]}]}]
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n"


def _dev_table(report: dict[str, Any]) -> list[str]:
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, m in report.get("per_class", {}).items():
        rows.append(f"| {label} | {m['precision']:.1f} | {m['recall']:.1f} | {m['f1']:.1f} | {m['support']} |")
    return rows


def write_model_card(directory: str, fields: dict[str, Any], source_metrics: dict[str, Any],
                     parity: dict[str, float], precision: str, final_dir: str) -> str:
    """Write `directory`/README.md from the manifest fields, the source's metrics and the export's parity checks.

    `final_dir` is where the artifact will live (`directory` may be a staging folder), for the usage lines.
    """
    report = _read_json(directory, "dev_report.json")
    weighted_f1 = report.get("weighted_f1", source_metrics.get("dev_weighted_f1"))
    card = front_matter(fields, _read_json(directory, "config.json").get("encoder"), weighted_f1, precision)
    bio = {"none": "none (the no-bio ablation: utterances and conversation context only)",
           "mlp": "mlp (the paper's head: the speaker's bio vector joins the utterance vector)",
           "attn": "attn (utterances attend over their speaker's bio)"}.get(fields["bio_mode"], fields["bio_mode"])
    lines = [
        f"# BiosERC-BERT classifier ({fields['label_set']}, {precision})", "",
        "Labels every utterance of a conversation with an emotion"
        + (" from the utterances and their conversation alone (no bios)." if fields["bio_mode"] == "none" else
           ", using a short biography of each speaker written by an LLM (`bioserc bios`)."),
        "Exported by `bioserc export onnx`; `manifest.json` lists every file's sha256 and `bioserc label --model` /",
        "`bioserc evaluate --model` verify them before loading.", "",
        f"- labels (model order): {', '.join(fields['labels'])}",
        f"- bio mode: {bio}",
        f"- context window: ±{fields['window']} utterances; max tokens {fields['max_length']} "
        f"(bios {fields['bio_max_length']})",
        f"- graphs: `encoder.onnx` (encoder + pooling, {precision}), `head.onnx` (conversation head, fp32)",
    ]
    if "int8_logits_max_abs_diff" in parity:
        diff = parity["int8_logits_max_abs_diff"]
        lines.append(f"- int8 vs PyTorch on a synthetic batch: max |logit diff| {diff:.3g} "
                     "(label agreement on real data: docs/BENCHMARKS.md)")
    lines.append(f"- fp32 export vs PyTorch: max |logit diff| {parity['fp32_logits_max_abs_diff']:.3g}")
    if report:
        lines += ["", f"## Dev results of the source checkpoint ({report['n']} utterances)", "",
                  f"weighted F1 {report['weighted_f1']:.2f} · accuracy {report['accuracy']:.2f} · "
                  f"macro F1 {report['macro_f1']:.2f}", "", *_dev_table(report)]
    elif source_metrics:
        lines += ["", "## Source metrics", "", *(f"- {k}: {v}" for k, v in source_metrics.items())]
    lines += ["", "## Use", "", "```bash", f"bioserc label calls/ -o runs/labels --model {final_dir}",
              f"bioserc evaluate --model {final_dir} --data DATA.json [--bios BIOS.jsonl]", "```", "",
              "## Limits", "",
              "Trained on the data named above (MELD and EmoryNLP are both dialogue from the TV series Friends), not",
              "on call-centre speech: treat labels on customer calls as indicative and validate on your own annotated",
              "calls before acting on them. Bios written by a small LLM can be generic or wrong; they only steer the",
              "classifier."]
    path = os.path.join(directory, CARD_FILE)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(card + "\n".join(lines) + "\n")
    return path
