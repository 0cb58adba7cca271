"""Choosing a backend by name.

Backend modules are imported only when chosen: each pulls in a heavy, optional runtime (torch, onnxruntime,
tensorrt-llm) that most installs lack or do not need. This factory is imported by its callers only (the CLI,
pipelines, benchmarks); what the backends share lives in `chat` and `bioserc.batching`, so no backend imports it.
"""

from __future__ import annotations

from typing import Any

from bioserc.bios.base import LLMBackend


BACKENDS = ("transformers", "onnx", "openai", "trtllm")


def make_backend(kind: str, model: str, **options: Any) -> LLMBackend:
    """Build a backend; for local kinds `model` may be an embedded model name ("smollm2", "minilm") or a folder.

    `options` go to the backend's constructor unchanged. Every local kind takes `batch_size` (what the pipelines
    pass); openai takes `base_url` plus its request options (`OpenAICompatibleBackend`).
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; valid kinds: {', '.join(BACKENDS)}")
    if kind == "openai":
        if "base_url" not in options:
            raise ValueError("the openai backend needs base_url, e.g. http://localhost:8000")
        from bioserc.bios.http_backend import OpenAICompatibleBackend

        return OpenAICompatibleBackend(model=model, **options)

    from bioserc.embedded import resolve_model

    path = resolve_model(model)
    backend: LLMBackend
    if kind == "transformers":
        from bioserc.bios.transformers_backend import TransformersBackend

        backend = TransformersBackend(path, **options)
    elif kind == "onnx":
        from bioserc.bios.ort_backend import OrtBackend

        backend = OrtBackend(path, **options)
    else:
        from bioserc.bios.trtllm_backend import TrtLlmBackend

        backend = TrtLlmBackend(path, **options)
    backend.model_dir = path  # bio cache keys follow this folder's content (`LLMBackend.identity`)
    return backend
