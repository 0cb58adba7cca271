"""TensorRT-LLM for the merged bio/label LLM: a legacy TensorRT engine build, or serve instructions without one.

    bioserc export trtllm --model runs/meld-smollm2-merged -o serving_artifacts/smollm2-trt --max-batch-size 64
    bioserc export trtllm --model runs/meld-smollm2-merged -o serving_artifacts/smollm2-serve --serve-only

Two ways to run the merged model on TensorRT-LLM (shared/docs/dependencies.md section 5):

* PyTorch backend, no engine (the default since tensorrt-llm 1.0 and the only path on its main branch):
  `trtllm-serve MERGED --host 0.0.0.0 --port 8000`, then bioserc's OpenAI-compatible client (completions endpoint).
  `--serve-only` writes exactly these instructions (README-serve.md, plus a LoRA `--extra_llm_api_options` YAML for
  serving an unmerged adapter) and an hf-llm manifest pointing at the model; it needs no tensorrt_llm and no GPU.
  Every command in it names real folders: the merged model as given (absolute), and for the LoRA base an embedded
  name (an adapter manifest's `base_model: smollm2`) resolved to its local folder.
* Legacy TensorRT engine (tensorrt-llm <= 1.2.x; deprecated there, removed on main): `build_engine` runs
  `tensorrt_llm._tensorrt_engine.LLM(model=MERGED, build_config=BuildConfig(...))` and `llm.save(ENGINE_DIR)`,
  writes the same README-serve.md (with the engine command) and a trtllm-engine manifest. An engine is built for
  the GPU type it runs on, with fixed limits: `size_for_workload` derives them from the bio and label prompts.

tensorrt_llm cannot be installed on bioserc's Python 3.11 (no cp311 wheel; it also pins torch 2.9.1, numpy<2,
onnx<1.20), so `build_engine` only runs inside export/docker/Dockerfile.trtllm (Python 3.12, NVIDIA's
`nvcr.io/nvidia/tensorrt-llm/release` image) on a GPU host; elsewhere `require_trtllm` fails with that explanation.

UNVERIFIED: no engine has been built by this code (no GPU, no installable tensorrt_llm here). The API names are
read from the TensorRT-LLM sources and docs, not run: `from tensorrt_llm._tensorrt_engine import LLM` (an alias of
`tensorrt_llm.llmapi.llm._TrtLLM`), `from tensorrt_llm import BuildConfig` with the fields max_batch_size,
max_input_len, max_seq_len, max_num_tokens, `LLM(model=..., dtype=..., build_config=...)`, `LLM.save(dir)` (a copy
of the built engine folder) and `LLM.shutdown()`; the trtllm-serve flags --host, --port, --backend tensorrt,
--tokenizer, --max_batch_size, --max_num_tokens, --max_seq_len, --extra_llm_api_options and the `lora_config` YAML
keys; the image tag in the Dockerfile. Whether `llm.save` copies the tokenizer is not known, so missing tokenizer
files are copied from the merged folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from bioserc.artifacts import MANIFEST, manifest_id, read_manifest, write_manifest
from bioserc.embedded import resolve_model
from bioserc.export._staging import check_target, publish
from bioserc.export.onnx_llm import CARRIED, source_llm_manifest
from bioserc.fsutil import staging_dir


logger = logging.getLogger(__name__)

SERVE_README = "README-serve.md"
LORA_YAML = "extra_llm_api_options.lora.yaml"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)
DEFAULT_MAX_NUM_TOKENS = 8192  # TensorRT-LLM's own BuildConfig default
NOT_IMPORTABLE = (
    "tensorrt_llm is not importable here ({error}). It has no Python 3.11 wheel (only cp310/cp312 wheels, from "
    "pypi.nvidia.com) and needs an NVIDIA GPU with CUDA 13. Build engines inside the Python 3.12 container "
    "export/docker/Dockerfile.trtllm (FROM nvcr.io/nvidia/tensorrt-llm/release) on a GPU host. Without an engine, "
    "`bioserc export trtllm --serve-only` writes the trtllm-serve instructions for TensorRT-LLM's PyTorch backend."
)


def require_trtllm() -> ModuleType:
    """Import tensorrt_llm and check for a CUDA GPU, or explain where an engine can be built."""
    try:
        import tensorrt_llm
    except (ImportError, OSError) as err:  # OSError: installed, but CUDA/NCCL/TensorRT libraries are missing
        raise ImportError(NOT_IMPORTABLE.format(error=f"{type(err).__name__}: {err}")) from err
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "no CUDA GPU is visible (torch.cuda.is_available() is False): a TensorRT engine is built "
            "on, and for, the GPU type it will run on. Run the container with `--gpus all` on a GPU "
            "host, or use --serve-only"
        )
    return tensorrt_llm


@dataclass(frozen=True)
class EngineSize:
    max_batch_size: int
    max_input_len: int  # longest prompt
    max_seq_len: int  # longest prompt + generated tokens of one request
    max_num_tokens: int  # tokens one forward step may process across the batch (prefill chunks + 1 per decode)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def size_for_workload(
    bio_prompt_tokens: int,
    bio_new_tokens: int,
    label_prompt_tokens: int = 0,
    label_tokens: int = 0,
    max_batch_size: int = 64,
    multiple: int = 64,
    context_limit: int | None = None,
) -> EngineSize:
    """Engine limits that fit both jobs the merged LLM does: writing bios and (LLM variant) emitting labels.

    Args:
        bio_prompt_tokens / bio_new_tokens: the longest bio prompt and the bio generation limit (`bioserc bios`
            records `prompt_tokens` per row; use their max, and its `--max-new-tokens`).
        label_prompt_tokens / label_tokens: the same for the label prompt (0 when the LLM only writes bios).
        max_batch_size: requests scheduled together (in-flight batching).
        multiple: lengths are rounded up to this, as headroom for tokenisation differences.
        context_limit: the model's max_position_embeddings; lengths are capped there, and a workload that cannot
            fit is an error.

    max_num_tokens holds at least one whole prompt plus one decode token for every other request (so a long prompt
    is never starved), grows towards TensorRT-LLM's default of 8192 so several prompts prefill in one step, and never
    exceeds every request's prompt at once.
    """
    sizes = (bio_prompt_tokens, bio_new_tokens, label_prompt_tokens, label_tokens, max_batch_size, multiple)
    if min(sizes) < 0 or max_batch_size < 1 or multiple < 1:
        raise ValueError(f"token counts must be >= 0 and max_batch_size, multiple >= 1; got {sizes}")
    longest_prompt = max(bio_prompt_tokens, label_prompt_tokens)
    if longest_prompt == 0:
        raise ValueError("give the longest bio prompt and/or label prompt in tokens")
    longest_request = max(bio_prompt_tokens + bio_new_tokens, label_prompt_tokens + label_tokens)
    if context_limit is not None and longest_request > context_limit:
        raise ValueError(f"a request of {longest_request} tokens does not fit the model's context of {context_limit}")
    max_input_len = _round_up(longest_prompt, multiple)
    max_seq_len = _round_up(longest_request, multiple)
    if context_limit is not None:
        max_input_len, max_seq_len = min(max_input_len, context_limit), min(max_seq_len, context_limit)
    floor = max_input_len + max_batch_size - 1
    max_num_tokens = max(floor, min(DEFAULT_MAX_NUM_TOKENS, max_batch_size * max_input_len))
    return EngineSize(max_batch_size, max_input_len, max_seq_len, _round_up(max_num_tokens, multiple))


def lora_options_yaml(adapter_dir: str, max_lora_rank: int = 64, max_loras: int = 1) -> str:
    """`--extra_llm_api_options` YAML that serves an unmerged peft adapter (`adapter_dir`, written as given) on the
    base model (PyTorch backend)."""
    return (
        f"# trtllm-serve BASE_MODEL --extra_llm_api_options {LORA_YAML}\n"
        "lora_config:\n"
        f"  lora_dir:\n    - {os.path.abspath(adapter_dir)}\n"
        f"  max_lora_rank: {max_lora_rank}\n"
        f"  max_loras: {max_loras}\n"
        f"  max_cpu_loras: {max_loras}\n"
    )


def serve_instructions(
    merged_dir: str,
    engine_dir: str | None = None,
    adapter_dir: str | None = None,
    base_dir: str | None = None,
    size: EngineSize | None = None,
    host: str = "0.0.0.0",
    port: int = 8000,
) -> str:
    """README-serve.md: how to serve the merged model with trtllm-serve (and the engine, when one was built)."""
    merged = os.path.abspath(merged_dir)
    served = os.path.basename(merged)
    limits = (
        (
            f" --max_batch_size {size.max_batch_size} --max_num_tokens {size.max_num_tokens} "
            f"--max_seq_len {size.max_seq_len}"
        )
        if size
        else ""
    )
    lines = [
        "# Serving with TensorRT-LLM",
        "",
        "Inside the TensorRT-LLM container on a GPU host (export/docker/Dockerfile.trtllm, or "
        "`docker run --gpus all --ipc host -p 8000:8000 -v ...:... nvcr.io/nvidia/tensorrt-llm/release:<tag>`).",
        "",
        "## PyTorch backend (no engine; recommended)",
        "",
        "```bash",
        f"trtllm-serve {merged} --host {host} --port {port}{limits}",
        "```",
    ]
    if engine_dir:
        lines += [
            "",
            "## Prebuilt TensorRT engine (legacy backend, tensorrt-llm <= 1.2.x, this GPU type only)",
            "",
            "```bash",
            f"trtllm-serve {os.path.abspath(engine_dir)} --backend tensorrt --tokenizer {merged} "
            f"--host {host} --port {port}",
            "```",
        ]
    lora_base = "BASE_MODEL_DIR"
    if base_dir:
        resolved = resolve_model(base_dir)  # an embedded name: trtllm-serve needs its folder
        lora_base = os.path.abspath(resolved) if os.path.isdir(resolved) else resolved
    adapter = os.path.abspath(adapter_dir) if adapter_dir else "ADAPTER_DIR"
    lines += [
        "",
        "## LoRA adapter without merging (PyTorch backend)",
        "",
        f"Write `{LORA_YAML}`" + (" (written beside this file):" if adapter_dir else ":"),
        "",
        "```yaml",
        lora_options_yaml(adapter).rstrip("\n"),
        "```",
        "",
        "```bash",
        f"trtllm-serve {lora_base} --host {host} --port {port} --extra_llm_api_options {LORA_YAML}",
        "```",
        "",
        'Each request then names the adapter: `extra_body={"lora_request": {"lora_name": "bioserc", '
        f'"lora_int_id": 1, "lora_path": "{adapter}"}}}}`.',
        "",
        "## Calling it from bioserc",
        "",
        "trtllm-serve has no chat-prefill extension, and bioserc's bio prompts pre-fill the answer "
        "(`<SPEAKER> is`), so use the completions endpoint with the chat template rendered locally. "
        f"trtllm-serve serves a folder under its last path component (`{served}`"
        + (f"; the engine: `{os.path.basename(os.path.abspath(engine_dir))}`" if engine_dir else "")
        + ", as GET /v1/models lists it):",
        "",
        "```bash",
        f"bioserc bios CALLS -o OUT --backend openai --base-url http://HOST:{port} --model {served} "
        f"--endpoint completions --tokenizer {merged}",
        "```",
        "",
        "```python",
        "from bioserc.bios.http_backend import OpenAICompatibleBackend",
        f'backend = OpenAICompatibleBackend("http://HOST:{port}", model="{served}", '
        f'endpoint="completions", tokenizer_path="{merged}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _copy_tokenizer(merged_dir: str, engine_dir: str) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        src, dst = os.path.join(merged_dir, name), os.path.join(engine_dir, name)
        if os.path.isfile(src) and not os.path.exists(dst):
            shutil.copy2(src, dst)
            copied.append(name)
    return copied


def _carried(source: dict[str, Any] | None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: source[k] for k in CARRIED if source and k in source and k not in drop}


def write_serve_only(
    merged_dir: str,
    out_dir: str,
    adapter_dir: str | None = None,
    base_dir: str | None = None,
    size: EngineSize | None = None,
    host: str = "0.0.0.0",
    port: int = 8000,
) -> dict[str, Any]:
    """README-serve.md (+ the LoRA YAML when an adapter is given) and an hf-llm manifest naming the model folder.

    The folder holds no weights: `model_path` in the manifest points at the merged model that trtllm-serve loads.
    """
    check_target(out_dir)
    source = source_llm_manifest(merged_dir)
    if adapter_dir and not base_dir and os.path.isfile(os.path.join(adapter_dir, MANIFEST)):
        base_dir = read_manifest(adapter_dir).get("base_model")  # as the adapter's manifest names it
    tmp = staging_dir(out_dir)
    try:
        with open(os.path.join(tmp, SERVE_README), "w", encoding="utf-8") as fh:
            fh.write(serve_instructions(merged_dir, None, adapter_dir, base_dir, size, host, port))
        if adapter_dir:
            with open(os.path.join(tmp, LORA_YAML), "w", encoding="utf-8") as fh:
                fh.write(lora_options_yaml(os.path.abspath(adapter_dir)))
        manifest = write_manifest(
            tmp,
            "hf-llm",
            **_carried(source),
            serve_only=True,
            runtime="trtllm-serve (PyTorch backend)",
            model_path=os.path.abspath(merged_dir),
            adapter_path=os.path.abspath(adapter_dir) if adapter_dir else None,
            limits=asdict(size) if size else None,
            source_checkpoint=manifest_id(merged_dir) if source else None,
        )
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def build_engine(
    merged_dir: str,
    engine_dir: str,
    max_batch_size: int,
    max_input_len: int,
    max_seq_len: int,
    dtype: str = "auto",
    max_num_tokens: int | None = None,
    host: str = "0.0.0.0",
    port: int = 8000,
) -> dict[str, Any]:
    """Build a TensorRT engine for this GPU from the merged HF folder; write it, README-serve.md and a manifest.

    Unverified here (see the module docstring); needs tensorrt-llm 1.2.x and a CUDA GPU.
    """
    if not 0 < max_input_len <= max_seq_len:
        raise ValueError(f"need 0 < max_input_len ({max_input_len}) <= max_seq_len ({max_seq_len})")
    check_target(engine_dir)
    source = source_llm_manifest(merged_dir)
    trt = require_trtllm()
    from tensorrt_llm import BuildConfig
    from tensorrt_llm._tensorrt_engine import LLM

    size = EngineSize(
        max_batch_size,
        max_input_len,
        max_seq_len,
        max_num_tokens
        or size_for_workload(
            max_input_len, max_seq_len - max_input_len, max_batch_size=max_batch_size, multiple=1
        ).max_num_tokens,
    )
    build_config = BuildConfig(
        max_batch_size=size.max_batch_size,
        max_input_len=size.max_input_len,
        max_seq_len=size.max_seq_len,
        max_num_tokens=size.max_num_tokens,
    )
    tmp = staging_dir(engine_dir)
    try:
        llm = LLM(model=merged_dir, dtype=dtype, build_config=build_config)
        try:
            llm.save(tmp)
        finally:
            llm.shutdown()
        copied = _copy_tokenizer(merged_dir, tmp)
        with open(os.path.join(tmp, SERVE_README), "w", encoding="utf-8") as fh:
            fh.write(serve_instructions(merged_dir, engine_dir, size=size, host=host, port=port))
        import torch

        manifest = write_manifest(
            tmp,
            "trtllm-engine",
            **_carried(source, drop=("dtype",)),
            backend="tensorrt (legacy engine)",
            dtype=dtype,
            limits=asdict(size),
            gpu=torch.cuda.get_device_name(0),
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            versions={"tensorrt_llm": getattr(trt, "__version__", "unknown"), "torch": torch.__version__},
            tokenizer_files_copied=copied,
            model_path=os.path.abspath(merged_dir),
            source_checkpoint=manifest_id(merged_dir) if source else None,
        )
        publish(tmp, engine_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("engine for %s written to %s: %s", merged_dir, engine_dir, json.dumps(asdict(size)))
    return manifest
