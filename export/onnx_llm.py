"""Export a merged (LoRA folded in) causal LM to ONNX with a KV cache, for `bioserc bios --backend onnx`.

    bioserc export onnx-llm --model runs/meld-smollm2-merged -o serving_artifacts/smollm2-merged-onnx

optimum's `main_export(task="text-generation-with-past")` writes one `model.onnx` (inputs input_ids, attention_mask,
position_ids, past_key_values.*; outputs logits, present.*), the config, generation config and tokenizer (with its
chat template); `optimum.onnxruntime.ORTModelForCausalLM` generates from the folder. The Hub is never contacted
(`local_files_only`). An adapter folder is refused: merge it first (`python -m bioserc.training.merge_llm`), since an
ONNX graph holds fixed weights.

The manifest (kind onnx-llm) carries the source's labels and prompt settings when the source is a bioserc artifact
(an hf-llm folder from merge_llm), so prompts built for the merged model stay the same after export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from bioserc.artifacts import MANIFEST, manifest_hash, read_manifest, verify_artifact, write_manifest
from bioserc.export._staging import check_target, publish
from bioserc.fsutil import staging_dir


logger = logging.getLogger(__name__)

TASK = "text-generation-with-past"
CARRIED = ("model_family", "label_set", "labels", "prompt_version", "prompt", "chat_template", "metrics",
           "base_model", "dtype")


def source_llm_manifest(model_dir: str) -> dict[str, Any] | None:
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder {model_dir!r} does not exist")
    if os.path.isfile(os.path.join(model_dir, "adapter_config.json")):
        raise ValueError(f"{model_dir!r} is a LoRA adapter; merge it into its base first "
                         "(python -m bioserc.training.merge_llm --adapter DIR -o MERGED) and export MERGED")
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


def export_llm(model_dir: str, out_dir: str, opset: int | None = None, validate: bool = False) -> dict[str, Any]:
    """Export `model_dir` (a merged HF causal LM folder) into `out_dir`; return the new manifest.

    Args:
        opset: ONNX opset; None lets optimum choose (its tested default for the architecture).
        validate: also let optimum compare ONNX Runtime against PyTorch on random inputs (slow for large models).
    """
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as err:
        raise ImportError("ONNX LLM export needs optimum-onnx and onnxruntime: pip install 'bioserc[cpu]'") from err
    check_target(out_dir)
    source = source_llm_manifest(model_dir)
    tmp = staging_dir(out_dir)
    try:
        main_export(model_dir, output=tmp, task=TASK, opset=opset, do_validation=validate, local_files_only=True,
                    device="cpu")
        onnx_path = os.path.join(tmp, "model.onnx")
        if not os.path.isfile(onnx_path):
            raise RuntimeError(f"optimum wrote no model.onnx into {tmp} (files: {sorted(os.listdir(tmp))})")
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        fields = {k: source[k] for k in CARRIED if source and k in source}
        fields.setdefault("model_family", config.get("model_type"))
        manifest = write_manifest(
            tmp, "onnx-llm", **fields, task=TASK, architecture=(config.get("architectures") or [None])[0],
            max_context=config.get("max_position_embeddings"), opset=_opset(onnx_path), precision="fp32",
            versions=_versions(), source_path=os.path.abspath(model_dir),
            source_checkpoint=manifest_hash(model_dir) if source else None)
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s -> %s", model_dir, out_dir)
    return manifest
