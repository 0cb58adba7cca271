"""The short model card (README.md) every classifier artifact carries, written from what the export knows.

It is generated, not hand-written, so that it cannot drift from the files it describes, and it is written before the
manifest so that its checksum is verified like every other file. It opens with the Hugging Face model-card metadata
(YAML front matter: library, tags, dataset, base model and the dev weighted F1 as a model-index result), so the Hub
and other tools can index the folder as they index any model.

One checkpoint's dev score says little on its own (seeds alone move weighted F1 by a point or more), so an export can
also carry its variant's row of a `bench/sweep.py` results.json (`load_seed_results`): the card then states weighted
F1 as mean ± std over the seeds, and the model-index result is that mean.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import yaml


CARD_FILE = "README.md"
# Hub ids of the embedded encoders (bioserc.embedded), for `base_model`; a local encoder folder has none to name.
BASE_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "mpnet": "sentence-transformers/all-mpnet-base-v2"}
DATASET_NAMES = {"meld": "MELD", "emorynlp": "EmoryNLP", "iemocap": "IEMOCAP"}
CONTEXT_LAYERS = {  # manifests written before `context` existed have the Transformer layer
    "transformer": "one Transformer layer over the call",
    "gru": "a bidirectional GRU over the call, added to its input",
}


def _read_json(directory: str, name: str) -> dict[str, Any]:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_seed_results(path: str, key: str) -> dict[str, Any]:
    """The row `key` ("DATASET/VARIANT") of a `bench/sweep.py` results.json, as the card and manifest record it.

    Called before an export starts, so a wrong file or name costs nothing: ValueError naming both when the file is
    missing or unreadable, the row is not in its table, or no seed of the row finished (n == 0).
    """
    dataset, _, variant = key.partition("/")
    if not dataset or not variant:
        raise ValueError(f"seed variant {key!r} is not DATASET/VARIANT (e.g. meld/scores, as results.json names it)")
    if not os.path.isfile(path):
        raise ValueError(
            f"seed results {path}: no such file (the results.json `bench/sweep.py` writes), so {key} cannot be read"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            results = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"seed results {path}: not readable as JSON ({err}), so {key} cannot be read") from err
    table = results.get("table") if isinstance(results, dict) else None
    if not isinstance(table, list):
        raise ValueError(f"seed results {path} has no `table`: not a bench/sweep.py results.json ({key} wanted)")
    row = next((r for r in table if (r.get("dataset"), r.get("variant")) == (dataset, variant)), None)
    if row is None:
        known = ", ".join(f"{r.get('dataset')}/{r.get('variant')}" for r in table) or "no rows"
        raise ValueError(f"seed results {path} has no row {key} (it has {known})")
    weighted, macro = row["weighted_f1"], row["macro_f1"]
    if not weighted["n"]:
        raise ValueError(
            f"seed results {path}: {key} has no finished seed (n == 0; missing seeds "
            f"{row.get('missing_seeds')}), so there is no mean to report"
        )
    diff = row.get("vs_reference")
    return {
        "dataset": dataset,
        "variant": variant,
        "n": weighted["n"],
        "weighted_f1_mean": weighted["mean"],
        "weighted_f1_std": weighted["std"],
        "macro_f1_mean": macro["mean"],
        "macro_f1_std": macro["std"],
        "per_seed": weighted["per_seed"],
        "missing_seeds": row.get("missing_seeds", []),
        "source": os.path.basename(path),
        "vs_reference": None
        if not diff or not diff["weighted_f1"]["n"]
        else {
            "reference": diff["reference"],
            "n": diff["weighted_f1"]["n"],
            "weighted_f1_mean": diff["weighted_f1"]["mean"],
            "weighted_f1_std": diff["weighted_f1"]["std"],
            "macro_f1_mean": diff["macro_f1"]["mean"],
            "macro_f1_std": diff["macro_f1"]["std"],
        },
    }


def _mean_std(mean: float, std: float | None, signed: bool = False) -> str:
    text = format(mean, "+.2f" if signed else ".2f")
    return f"{text} ± {std:.2f}" if std is not None else f"{text} (one seed: no std)"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _checkpoint_seed(seeds: dict[str, Any], weighted_f1: float | None) -> str | None:
    """Which averaged seed the shipped checkpoint is ("seed 2"), None when none: its dev weighted F1 and the sweep's
    per-seed values are read from the same dev_report.json, so they are equal for the seed it was trained with."""
    matches = [
        seed
        for seed, value in seeds["per_seed"].items()
        if weighted_f1 is not None and math.isclose(value, weighted_f1, rel_tol=0, abs_tol=1e-9)
    ]
    return f"seed {' or '.join(matches)}" if matches else None


def _seed_section(seeds: dict[str, Any], checkpoint: str | None) -> list[str]:
    weighted = (
        f"weighted F1 {_mean_std(seeds['weighted_f1_mean'], seeds['weighted_f1_std'])} over "
        f"{_seeds(seeds['n'])} (per seed: {' / '.join(f'{v:.2f}' for v in seeds['per_seed'].values())}, "
        f"seeds {' / '.join(seeds['per_seed'])}); "
        f"macro F1 {_mean_std(seeds['macro_f1_mean'], seeds['macro_f1_std'])}"
    )
    lines = ["", f"## Across seeds ({seeds['dataset']}/{seeds['variant']}, {seeds['source']})", "", weighted]
    if diff := seeds["vs_reference"]:
        lines += [
            "",
            f"vs the reference variant {diff['reference']}, paired per seed over {_seeds(diff['n'])}: "
            f"weighted F1 {_mean_std(diff['weighted_f1_mean'], diff['weighted_f1_std'], signed=True)}, "
            f"macro F1 {_mean_std(diff['macro_f1_mean'], diff['macro_f1_std'], signed=True)}",
        ]
    lines += [
        "",
        "Dev scores of the best checkpoint of each seed's run with these settings (`bench/sweep.py`); ± is "
        "the sample std (n − 1). The shipped checkpoint is "
        + (f"{checkpoint}." if checkpoint else "not one of these seeds (its dev weighted F1 matches none of them)."),
    ]
    if seeds["missing_seeds"]:
        missing = seeds["missing_seeds"]
        lines.append(
            f"Seed{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} did not finish and "
            f"{'are' if len(missing) > 1 else 'is'} not averaged."
        )
    return lines


_PROFILES = {
    "text": (
        "using a short biography of each speaker written by an LLM (`bioserc bios`).",
        "text bios (`bioserc bios`: the free-text `--profile text` or the emotion-focused `--profile emotion`, "
        "both text; the checkpoint does not record which), encoded by the encoder",
    ),
    "scores": (
        "using each speaker's emotion-label probabilities scored by an LLM (the `scores` profile).",
        "`scores` vectors ({dim} label probabilities per speaker from the bio LLM, in the label order above: "
        "`bioserc bios --profile scores`, or made by `bioserc label` in the pipeline), projected by the head",
    ),
    "latent": (
        "using each speaker's hidden-state vector from an LLM (the `latent` profile).",
        "`latent` vectors ({dim} floats per speaker: the bio LLM's final hidden state, `bioserc bios --profile "
        "latent` or made by `bioserc label`; the same LLM as the training vectors'), projected by the head",
    ),
}


def front_matter(
    fields: dict[str, Any],
    encoder: str | None,
    weighted_f1: float | None,
    precision: str,
    metric_name: str = "weighted F1 (source checkpoint)",
) -> str:
    """The card's YAML metadata block, between `---` lines."""
    label_set = fields["label_set"]
    meta: dict[str, Any] = {
        "library_name": "bioserc",
        "pipeline_tag": "text-classification",
        "tags": [
            "emotion-recognition-in-conversation",
            "bioserc",
            "onnx",
            precision,
            f"bio-mode-{fields['bio_mode']}",
        ],
        "datasets": [label_set],
        "metrics": ["f1"],
    }
    if encoder in BASE_MODELS:
        meta["base_model"] = BASE_MODELS[encoder]
    if weighted_f1 is not None:
        meta["model-index"] = [
            {
                "name": f"bioserc-bert-{label_set}",
                "results": [
                    {
                        "task": {"type": "text-classification", "name": "Emotion recognition in conversation"},
                        "dataset": {
                            "name": DATASET_NAMES.get(label_set, label_set),
                            "type": label_set,
                            "split": "validation",
                        },
                        "metrics": [{"type": "f1", "name": metric_name, "value": round(float(weighted_f1), 2)}],
                    }
                ],
            }
        ]
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n"


def _dev_table(report: dict[str, Any]) -> list[str]:
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, m in report.get("per_class", {}).items():
        rows.append(f"| {label} | {m['precision']:.1f} | {m['recall']:.1f} | {m['f1']:.1f} | {m['support']} |")
    return rows


def _model_arg(final_dir: str) -> str:
    """How the usage lines name the model: a folder of serving_artifacts/ by its shipped name (which works from any
    directory once bioserc is installed), any other folder by its path."""
    path = os.path.abspath(final_dir)
    return os.path.basename(path) if os.path.basename(os.path.dirname(path)) == "serving_artifacts" else final_dir


def write_model_card(
    directory: str,
    fields: dict[str, Any],
    source_metrics: dict[str, Any],
    parity: dict[str, float],
    precision: str,
    final_dir: str,
    seed_results: dict[str, Any] | None = None,
    quantized: Sequence[str] = (),
) -> str:
    """Write `directory`/README.md from the manifest fields, the source's metrics and the export's parity checks.

    `final_dir` is where the artifact will live (`directory` may be a staging folder), for the usage lines.
    `seed_results`: the variant's row across seeds (`load_seed_results`), for the "Across seeds" section.
    `quantized`: the manifest's quantized graphs (a quantized head has int8 weights, whatever the encoder's bits).
    """
    report = _read_json(directory, "dev_report.json")
    weighted_f1 = report.get("weighted_f1", source_metrics.get("dev_weighted_f1"))
    encoder = _read_json(directory, "config.json").get("encoder")
    if seed_results:
        card = front_matter(
            fields,
            encoder,
            seed_results["weighted_f1_mean"],
            precision,
            f"weighted F1 (mean of {_seeds(seed_results['n'])})",
        )
    else:
        card = front_matter(fields, encoder, weighted_f1, precision)
    profile = fields.get("profile") or "text"  # manifests written before profiles existed are text models
    vector = fields["bio_mode"] != "none" and profile != "text"
    bio = "profile" if vector else "bio"
    modes = {
        "none": "none (the no-bio ablation: utterances and conversation context only)",
        "mlp": f"mlp (the paper's head: the speaker's {bio} vector joins the utterance vector)",
        "attn": f"attn (utterances attend over their speaker's {bio})",
    }
    intro, reads = _PROFILES[profile]
    lines = [
        f"# BiosERC-BERT classifier ({fields['label_set']}, {precision})",
        "",
        "Labels every utterance of a conversation with an emotion"
        + (
            " from the utterances and their conversation alone (no bios)."
            if fields["bio_mode"] == "none"
            else ", " + intro
        ),
        "Exported by `bioserc export onnx`; `manifest.json` lists every file's sha256 and `bioserc label --model` /",
        "`bioserc evaluate --model` verify them before loading.",
        "",
        f"- labels (model order): {', '.join(fields['labels'])}",
        f"- bio mode: {modes.get(fields['bio_mode'], fields['bio_mode'])}",
    ]
    if fields["bio_mode"] != "none":
        lines.append(f"- speaker profile: {reads.format(dim=fields.get('profile_dim'))}")
    if fields.get("encoder_layers"):
        lines.append(f"- encoder depth: its bottom {fields['encoder_layers']} pretrained layers (the rest dropped)")
    lines += [
        f"- context window: ±{fields['window']} utterances; max tokens {fields['max_length']}"
        + ("" if vector else f" (bios {fields['bio_max_length']})"),
        f"- conversation-level layer: {CONTEXT_LAYERS[fields.get('context', 'transformer')]}"
        + (" (sinusoidal utterance positions first)" if fields.get("positions", True) else ""),
        f"- graphs: `encoder.onnx` (encoder + pooling, {precision}), "
        f"`head.onnx` (conversation head, {'int8 weights' if 'head.onnx' in quantized else 'fp32'})",
    ]
    if shards := fields.get("external_data"):
        lines.append(
            "- graph weights stored beside the graphs, in shards that fit a git host's file limit: "
            + ", ".join(f"`{shard}`" for shard in shards)
        )
    if f"{precision}_logits_max_abs_diff" in parity:
        diff = parity[f"{precision}_logits_max_abs_diff"]
        lines.append(
            f"- {precision} vs PyTorch on a synthetic batch: max |logit diff| {diff:.3g} "
            "(label agreement on real data: docs/BENCHMARKS.md)"
        )
    lines.append(f"- fp32 export vs PyTorch: max |logit diff| {parity['fp32_logits_max_abs_diff']:.3g}")
    checkpoint = "the source checkpoint"
    if seed_results:
        seed = _checkpoint_seed(seed_results, weighted_f1)
        lines += _seed_section(seed_results, seed)
        checkpoint = f"the shipped checkpoint, {seed}" if seed else "the shipped checkpoint (not an averaged seed)"
    if report:
        lines += [
            "",
            f"## Dev results of {checkpoint} ({report['n']} utterances)",
            "",
            f"weighted F1 {report['weighted_f1']:.2f} · accuracy {report['accuracy']:.2f} · "
            f"macro F1 {report['macro_f1']:.2f}",
            "",
            *_dev_table(report),
        ]
    elif source_metrics:
        lines += ["", "## Source metrics", "", *(f"- {k}: {v}" for k, v in source_metrics.items())]
    model = _model_arg(final_dir)
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"bioserc label calls/ -o runs/labels --model {model}",
        f"bioserc evaluate --model {model} --data DATA.json [--bios BIOS.jsonl]",
        "```",
        "",
        "## Limits",
        "",
        "Trained on the data named above (MELD and EmoryNLP are both dialogue from the TV series Friends), not",
        "on call-centre speech: treat labels on customer calls as indicative and validate on your own annotated",
        "calls before acting on them. "
        + (
            "Profiles from a small LLM can be uninformative or wrong; they only steer the classifier."
            if vector
            else "Bios written by a small LLM can be generic or wrong; they only steer the classifier."
        ),
    ]
    path = os.path.join(directory, CARD_FILE)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(card + "\n".join(lines) + "\n")
    return path
