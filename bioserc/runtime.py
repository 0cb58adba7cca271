"""ONNX Runtime sessions: which execution providers to ask for, and the session options every bioserc graph uses.

onnxruntime is an optional dependency (`bioserc[cpu]` or `bioserc[gpu]`, never both: they ship the same module), so
it is imported lazily and a missing install says which extra to add.

Provider order for "auto": TensorRT EP, then CUDA EP, then CPU, each only when this onnxruntime build offers it.
ORT assigns every node to the first provider in the list that supports it, so later providers are fallbacks for
unsupported nodes (dynamic int8 ops, for instance, are CPU-only), and ORT itself retries with CUDA/CPU when the
TensorRT EP cannot initialise (TensorRT libraries missing). The TensorRT EP builds an engine per input shape range
on first use, which takes minutes for a large encoder: engines are cached under `$BIOSERC_CACHE/trt/` (or
`trt_cache_dir`), and fixed-shape input (`OnnxClassifier(..., pad_to_max=True)`) avoids rebuilds. The GPU providers,
the TensorRT EP options and ORT's fallback behaviour are unverified here (no GPU in the development environment).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any


TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}
INSTALL_HINT = (
    "onnxruntime is not installed: pip install 'bioserc[cpu]' (CPU) or 'bioserc[gpu]' (CUDA/TensorRT; "
    "never both in one environment)"
)


def onnxruntime() -> ModuleType:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return ort


def ort_providers(
    prefer: str = "auto", available: list[str] | None = None, candidates: Sequence[str] = PREFERENCE
) -> list[str]:
    """The execution providers to ask for, best first.

    Args:
        prefer: "auto" (TensorRT, CUDA, CPU: whichever this onnxruntime offers), or "tensorrt" / "cuda" / "cpu"
            (or a full provider name) to force one; a forced GPU provider keeps the slower ones behind it as
            fallbacks for the nodes it cannot run, and fails clearly when it is not available.
        available: what onnxruntime offers; default `onnxruntime.get_available_providers()`.
        candidates: the providers the caller can use, in `PREFERENCE` order. The LLM backend passes (CUDA, CPU):
            a decoder's input shapes change every step, and the TensorRT EP would build an engine for each.
    """
    if available is None:
        available = onnxruntime().get_available_providers()
    key = prefer.strip()
    if key.lower() == "auto":
        chosen = [p for p in candidates if p in available]
        if not chosen:
            raise RuntimeError(f"onnxruntime offers none of {list(candidates)} (available: {available})")
        return chosen
    name = ALIASES.get(key.lower(), key)
    if name not in candidates:
        names = ", ".join(k for k, v in ALIASES.items() if v in candidates and k not in ("trt", "gpu"))
        raise ValueError(f"unknown execution provider {prefer!r}; choose auto, {names}")
    if name not in available:
        hint = (
            "install onnxruntime-gpu instead of onnxruntime (pip install 'bioserc[gpu]') on a machine with an "
            "NVIDIA GPU"
            if name != CPU
            else "reinstall onnxruntime"
        )
        raise RuntimeError(
            f"execution provider {name} is not available in this onnxruntime build (available: {available}); {hint}"
        )
    return [p for p in candidates[list(candidates).index(name) :] if p in available]


def default_threads() -> int:
    """CPUs this process may use (the cgroup/affinity set, not the host's core count when it is restricted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _trt_cache(path: str) -> str:
    """$BIOSERC_CACHE/trt/<hash of the graph's path and size>: never inside the (possibly read-only) artifact."""
    import hashlib

    from bioserc.embedded import cache_dir

    key = hashlib.sha256(f"{os.path.abspath(path)}:{os.path.getsize(path)}".encode()).hexdigest()[:16]
    return str(cache_dir() / "trt" / key)


def session_options(threads: int | None = None) -> Any:
    """The `onnxruntime.SessionOptions` every bioserc graph runs with: all graph optimisations, `threads` intra-op
    threads (default `default_threads()`), and no spin-waiting unless BIOSERC_ORT_SPIN=1.

    ORT's intra-op threads spin between ops by default: fast on an idle machine, but when another CPU-heavy process
    shares the cores the spinning threads take the time it needs and both thrash; sleeping threads do not.
    """
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    if os.environ.get("BIOSERC_ORT_SPIN") != "1":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Int8-weight MatMuls (MatMulNBits) compute in fp32 instead of quantizing activations on the fly: ORT picks that
    # int8 kernel per CPU (AVX2, VNNI, AVX-512), and its rounding moved MELD valid W-F1 by 0.16 between two machines.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options


def make_session(
    path: str, providers: list[str] | None = None, threads: int | None = None, trt_cache_dir: str | None = None
) -> Any:
    """An `onnxruntime.InferenceSession` with `session_options(threads)`: every graph optimisation on, one intra-op
    thread per usable CPU, no spin-waiting.

    Args:
        path: the .onnx file.
        providers: from `ort_providers`; default CPU only.
        threads: intra-op threads; default `default_threads()`.
        trt_cache_dir: where the TensorRT EP caches its engines (only used when it is in `providers`); default
            `$BIOSERC_CACHE/trt/<key>`.
    """
    ort = onnxruntime()
    options = session_options(threads)
    requested: list[Any] = []
    for provider in providers or [CPU]:
        if provider == TENSORRT:
            cache = trt_cache_dir or _trt_cache(path)
            requested.append(
                (
                    TENSORRT,
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": cache,
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": cache,
                    },
                )
            )
        else:
            requested.append(provider)
    return ort.InferenceSession(path, sess_options=options, providers=requested)
