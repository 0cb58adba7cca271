"""TensorRT-LLM backend, through its in-process LLM API (PyTorch backend, the default since tensorrt-llm 1.0).

tensorrt-llm ships no Python 3.11 wheel and needs an NVIDIA GPU, so it can never live in bioserc's main
environment: this module runs only inside NVIDIA's Python 3.12 container (export/docker/Dockerfile.trtllm). Outside
it, run `trtllm-serve MODEL` there and use the openai backend against it instead.

Prompts are rendered here with the model folder's HF chat template (the same `render_chat` as the local backends)
and handed over as token ids, so tensorrt-llm adds no second BOS and every backend sees the same prompt tokens.

API used (read from the tensorrt-llm sources and the 1.1-1.4 API reference; UNVERIFIED by running, since no build is
installable without a GPU and Python 3.12): `LLM(model, dtype=..., tensor_parallel_size=..., max_batch_size=...,
max_seq_len=...)`; `LLM.generate(list of token-id lists, SamplingParams(max_tokens, temperature, top_p, seed))`
returning objects with `.prompt_token_ids` and `.outputs[0].text / .token_ids / .finish_reason`; `LLM.shutdown()`.
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any

from bioserc.bios.base import Generation, GenerationConfig, LLMBackend, Messages
from bioserc.bios.chat import render_chat


INSTALL_HINT = (
    "the trtllm backend needs tensorrt_llm, which is not importable here. It has no Python 3.11 wheel and needs an "
    "NVIDIA GPU (CUDA 13): run bioserc inside the Python 3.12 NVIDIA container (export/docker/Dockerfile.trtllm), or "
    "start `trtllm-serve MODEL_DIR` there and use `--backend openai --base-url http://HOST:8000 --endpoint "
    "completions --tokenizer MODEL_DIR` from this environment (trtllm-serve has no chat prefill extension, so the "
    "prompt is rendered here)."
)


def require_tensorrt_llm() -> ModuleType:
    """Import tensorrt_llm or explain where it can run; never falls back to another runtime."""
    try:
        import tensorrt_llm
    except (ImportError, OSError) as err:  # OSError: installed, but CUDA/NCCL libraries are missing
        raise ImportError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from err
    return tensorrt_llm


def context_length(model: str, default: int = 8192) -> int:
    """max_position_embeddings from the HF config.json, read directly so no model class has to load."""
    with open(os.path.join(model, "config.json"), encoding="utf-8") as fh:
        return int(json.load(fh).get("max_position_embeddings") or default)


class TrtLlmBackend(LLMBackend):
    """Args:
    model: a local HF folder (the merged model; tensorrt-llm's PyTorch backend needs no engine build).
    batch_size: requests the runtime schedules together (its `max_batch_size`, in-flight batching); the same
        option as the other local backends, so the pipelines' `--batch-size` reaches it.
    max_seq_len: prompt plus generated tokens per request; None keeps the model's own limit.
    dtype: "auto", "bfloat16", "float16", ...
    tensor_parallel_size: GPUs per model.
    """

    name = "trtllm"

    def __init__(
        self,
        model: str,
        batch_size: int = 64,
        max_seq_len: int | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
    ):
        trt = require_tensorrt_llm()
        from transformers import AutoTokenizer

        self._sampling_params = trt.SamplingParams
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        options: dict[str, Any] = {"max_batch_size": batch_size}
        if max_seq_len is not None:
            options["max_seq_len"] = max_seq_len
        self.llm = trt.LLM(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size, **options)
        self.model_id = "trtllm:" + os.path.basename(os.path.normpath(model))
        self.model_dir = model
        self.max_context = max_seq_len or context_length(model)

    def count_tokens(self, messages: Messages) -> int:
        return len(self._encode(messages))

    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        """One call for the whole batch: the runtime's in-flight batching orders and pads requests itself."""
        if config.do_sample:
            params = self._sampling_params(
                max_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=config.seed,
                repetition_penalty=config.repetition_penalty,
            )
        else:
            params = self._sampling_params(
                max_tokens=config.max_new_tokens,
                temperature=0.0,
                seed=config.seed,
                repetition_penalty=config.repetition_penalty,
            )
        outputs = self.llm.generate([self._encode(m) for m in batch], params)
        gens = []
        for out in outputs:
            best = out.outputs[0]
            gens.append(
                Generation(
                    text=best.text,
                    prompt_tokens=len(out.prompt_token_ids),
                    new_tokens=len(best.token_ids),
                    finish_reason=best.finish_reason,
                )
            )
        return gens

    def close(self) -> None:
        self.llm.shutdown()

    def _encode(self, messages: Messages) -> list[int]:
        return self.tokenizer(render_chat(self.tokenizer, messages), add_special_tokens=False)["input_ids"]
