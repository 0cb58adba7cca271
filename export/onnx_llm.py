"""Export a merged (LoRA folded in) causal LM to ONNX with a KV cache, for `bioserc bios --backend onnx` and for
label scoring (`load_classifier`, so `bioserc evaluate` / `bioserc label --model`).

    bioserc export onnx-llm --model runs/meld-smollm2-merged -o serving_artifacts/smollm2-merged-onnx

optimum's `main_export(task="text-generation-with-past")` writes one `model.onnx` (inputs input_ids, attention_mask,
position_ids, past_key_values.*; outputs logits, present.*), the config, generation config and tokenizer (with its
chat template); `optimum.onnxruntime.ORTModelForCausalLM` runs the folder. The Hub is never contacted
(`local_files_only`). An adapter folder is refused: merge it first (`python -m bioserc.training.merge_llm`), since an
ONNX graph holds fixed weights.

The manifest (kind onnx-llm) carries the source's labels and prompt settings when the source is a bioserc artifact
(an hf-llm folder from merge_llm), so prompts built for the merged model stay the same after export; `bio_mode`
repeats the prompt's, for pipelines that plan bios from the manifest.

Parity is checked by default, before anything is promoted: a few fixed prompts are scored with PyTorch (the source
folder, fp32) and with ONNX Runtime (the export), as label scoring does it (prefill, then every answer from the KV
cache), and a max absolute difference over `PARITY_TOLERANCE` fails the export. A classifier's prompts and label
answers are scored; a plain LM (a bio writer) gets fixed texts and continuations. The difference goes into the
manifest (`parity`). `parity=False` (`--no-parity`) skips it: it loads the fp32 model once more, too much for a
very large one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from bioserc.artifacts import MANIFEST, manifest_id, read_manifest, verify_artifact, write_manifest
from bioserc.export._staging import check_target, publish
from bioserc.fsutil import staging_dir
from bioserc.schema import Conversation, Utterance


logger = logging.getLogger(__name__)

TASK = "text-generation-with-past"
CARRIED = (
    "model_family",
    "label_set",
    "labels",
    "prompt_version",
    "prompt",
    "chat_template",
    "metrics",
    "base_model",
    "dtype",
    "lora",
    "step",
    "source_adapter",
)
# Max |score difference| (nats) between ORT and PyTorch, both fp32: their kernels differ by ~1e-5 on small models.
PARITY_TOLERANCE = 1e-3
PARITY_CONVERSATION = Conversation(
    "parity",
    [
        Utterance(0, "SPEAKER_0", "I can't believe you did that to me!"),
        Utterance(1, "SPEAKER_1", "Relax, it was only a joke."),
        Utterance(2, "SPEAKER_0", "Well, nobody is laughing."),
        Utterance(3, "SPEAKER_1", "Okay, okay. I am sorry."),
    ],
)
PARITY_BIO = "Speaks fast and loud, gets upset easily, then calms down."
PARITY_TEXTS = (
    "The weather today is",
    "Describe the speaker's mood in one sentence:",
    "Conversation transcript: hello there, how are you?",
)
PARITY_CONTINUATIONS = (" calm", " angry and loud", " I am fine, thanks.")


def source_llm_manifest(model_dir: str) -> dict[str, Any] | None:
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder {model_dir!r} does not exist")
    if os.path.isfile(os.path.join(model_dir, "adapter_config.json")):
        raise ValueError(
            f"{model_dir!r} is a LoRA adapter; merge it into its base first "
            "(python -m bioserc.training.merge_llm --adapter DIR -o MERGED) and export MERGED"
        )
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir!r} has no config.json: not a Hugging Face model folder")
    if not os.path.isfile(os.path.join(model_dir, MANIFEST)):
        return None
    kind = read_manifest(model_dir).get("kind")
    if kind != "hf-llm":
        raise ValueError(f"{model_dir!r} holds a {kind!r} artifact; onnx-llm exports a merged hf-llm model")
    return verify_artifact(model_dir, "hf-llm")


def _opset(path: str) -> int | None:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def parity_inputs(model_dir: str, source: dict[str, Any] | None) -> tuple[list[list[int]], list[list[int]], int]:
    """Prompts, answers and pad id to compare the two runtimes on: a classifier's own prompts (every utterance of
    `PARITY_CONVERSATION`) and label answers, else fixed texts and continuations."""
    from transformers import AutoTokenizer

    from bioserc.models.llm_encoding import ChatEncoder
    from bioserc.prompts.erc_llm import ErcPromptConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if source and "labels" in source and "prompt" in source:
        encoder = ChatEncoder(tokenizer, source["labels"], ErcPromptConfig.from_dict(source["prompt"]))
        prompts = [
            encoder.prompt_ids(PARITY_CONVERSATION, i, PARITY_BIO) for i in range(len(PARITY_CONVERSATION.utterances))
        ]
        return prompts, encoder.answers, encoder.pad_id
    prompts = [tokenizer(text)["input_ids"] for text in PARITY_TEXTS]
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in PARITY_CONTINUATIONS]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return prompts, answers, pad or 0


def measure_parity(model_dir: str, onnx_dir: str, source: dict[str, Any] | None) -> dict[str, Any]:
    """Summed answer log-likelihoods from PyTorch (fp32, eager attention) and ONNX Runtime (CPU); the PyTorch model is
    freed before the ONNX one loads, so peak memory is one model, not two."""
    import torch
    from transformers import AutoModelForCausalLM

    from bioserc.models.llm_scoring import label_loglik
    from bioserc.models.onnx_llm_scoring import ort_causal_lm, ort_label_loglik

    prompts, answers, pad_id = parity_inputs(model_dir, source)
    reference = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()
    expected = label_loglik(reference, prompts, answers, pad_id)
    del reference
    got = ort_label_loglik(ort_causal_lm(onnx_dir, "cpu"), prompts, answers, pad_id)
    return {
        "checked": True,
        "max_abs_diff": float((expected - got).abs().max()),
        "prompts": len(prompts),
        "answers": len(answers),
    }


def export_llm(
    model_dir: str,
    out_dir: str,
    opset: int | None = None,
    validate: bool = False,
    parity: bool = True,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Export `model_dir` (a merged HF causal LM folder) into `out_dir`; return the new manifest.

    Args:
        opset: ONNX opset; None lets optimum choose (its tested default for the architecture).
        validate: also let optimum compare ONNX Runtime against PyTorch on random inputs (slow for large models).
        parity: score fixed prompts with both runtimes and refuse the export when they differ by more than
            `parity_tolerance` (see the module docstring); False records `parity: {"checked": false}`.
    Raises:
        RuntimeError: the parity check failed; `out_dir` is left as it was.
    """
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as err:
        raise ImportError("ONNX LLM export needs optimum-onnx and onnxruntime: pip install 'bioserc[cpu]'") from err
    check_target(out_dir)
    source = source_llm_manifest(model_dir)
    tmp = staging_dir(out_dir)
    try:
        main_export(
            model_dir, output=tmp, task=TASK, opset=opset, do_validation=validate, local_files_only=True, device="cpu"
        )
        onnx_path = os.path.join(tmp, "model.onnx")
        if not os.path.isfile(onnx_path):
            raise RuntimeError(f"optimum wrote no model.onnx into {tmp} (files: {sorted(os.listdir(tmp))})")
        checked = {"checked": False}
        if parity:
            checked = {**measure_parity(model_dir, tmp, source), "tolerance": parity_tolerance}
            if not checked["max_abs_diff"] <= parity_tolerance:  # NaN fails too
                raise RuntimeError(
                    f"ONNX export of {model_dir} does not match PyTorch: answer log-likelihoods differ by up to "
                    f"{checked['max_abs_diff']:.3g} (tolerance {parity_tolerance:g}) over {checked['prompts']} "
                    f"prompts x {checked['answers']} answers; nothing was written to {out_dir}"
                )
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        fields = {k: source[k] for k in CARRIED if source and k in source}
        fields.setdefault("model_family", config.get("model_type"))
        if "prompt" in fields:
            fields["bio_mode"] = fields["prompt"].get("bio_mode")
        manifest = write_manifest(
            tmp,
            "onnx-llm",
            **fields,
            task=TASK,
            architecture=(config.get("architectures") or [None])[0],
            max_context=config.get("max_position_embeddings"),
            opset=_opset(onnx_path),
            precision="fp32",
            parity=checked,
            versions=_versions(),
            source_path=os.path.abspath(model_dir),
            source_checkpoint=manifest_id(model_dir) if source else None,
        )
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s -> %s", model_dir, out_dir)
    return manifest
