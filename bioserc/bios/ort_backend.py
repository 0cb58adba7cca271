"""ONNX Runtime backend: the same greedy bios as the transformers backend, without PyTorch doing the matrix work.

It loads a folder that already holds an exported decoder with past key/values (optimum's `text-generation-with-past`
task); exporting is a separate, slow step, never done implicitly here. Batching and decoding are shared with the
transformers backend (`HFGenerationBackend`), so both see identical token sequences.
"""

from __future__ import annotations

import os

from bioserc.bios.hf_generation import HFGenerationBackend


PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")


def pick_provider(provider: str, available: list[str]) -> str:
    """"auto" takes CUDA when onnxruntime-gpu sees a GPU, else CPU; an explicit choice must be available."""
    if provider == "auto":
        for candidate in PROVIDER_PREFERENCE:
            if candidate in available:
                return candidate
        raise RuntimeError(f"onnxruntime offers neither CUDA nor CPU execution (available: {available})")
    if provider not in available:
        raise ValueError(f"execution provider {provider!r} is not available; onnxruntime offers {available}")
    return provider


class OrtBackend(HFGenerationBackend):
    """Args:
        model_dir: an ONNX export folder (model.onnx with past key/values, config.json, tokenizer files).
        provider: "auto", or an onnxruntime execution provider name such as "CPUExecutionProvider".
        batch_size: prompts per `generate` call.
    """

    name = "onnx"

    def __init__(self, model_dir: str, provider: str = "auto", batch_size: int = 8):
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"ONNX model folder not found: {model_dir}")
        if not any(name.endswith(".onnx") for name in os.listdir(model_dir)):
            raise FileNotFoundError(
                f"{model_dir} holds no .onnx model; export the merged model first, e.g. "
                f"`optimum-cli export onnx --task text-generation-with-past --model MERGED_DIR {model_dir}`"
            )
        try:
            import onnxruntime
            from optimum.onnxruntime import ORTModelForCausalLM
            from transformers import AutoTokenizer
        except ImportError as err:
            raise ImportError(
                "the onnx backend needs onnxruntime and optimum-onnx: pip install 'bioserc[cpu]' "
                "(or 'bioserc[gpu]' for CUDA)"
            ) from err
        self.provider = pick_provider(provider, onnxruntime.get_available_providers())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = ORTModelForCausalLM.from_pretrained(model_dir, use_cache=True, provider=self.provider)
        self.batch_size = batch_size
        self.model_id = "onnx:" + os.path.basename(os.path.normpath(model_dir))
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 8192))
