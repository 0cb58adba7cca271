"""ONNX Runtime backend: the same greedy bios as the transformers backend, without PyTorch doing the matrix work.

It loads a folder that already holds an exported decoder with past key/values (optimum's
`text-generation-with-past` task); exporting is a separate, slow step, never done implicitly here. Batching follows
the transformers backend exactly (length-sorted, left-padded, output sliced at the padded prompt length), so both
backends see identical token sequences. The decoded text is not stripped, like the transformers backend's: callers
append it to the pre-filled answer ("Ann:" + " cheerful ..."), where a leading space is part of the bio.
"""

from __future__ import annotations

import os
from typing import Any

from bioserc.bios.backend import Generation, GenerationConfig, LLMBackend, Messages
from bioserc.bios.backends import length_sorted_chunks, render_chat


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


class OrtBackend(LLMBackend):
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

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(render_chat(self.tokenizer, messages), add_special_tokens=False)["input_ids"])

    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        prompts = [render_chat(self.tokenizer, m) for m in batch]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        results: list[Any] = [None] * len(prompts)
        for chunk in length_sorted_chunks(lengths, self.batch_size):
            for i, gen in zip(chunk, self._generate_chunk([prompts[i] for i in chunk], config), strict=True):
                results[i] = gen
        return results

    def _generate_chunk(self, prompts: list[str], config: GenerationConfig) -> list[Generation]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "do_sample": config.do_sample,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if config.do_sample:
            torch.manual_seed(config.seed)
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]  # slice by tokens: the prompt never leaks into the bio
        stop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gens = []
        for row, mask in zip(new.tolist(), enc["attention_mask"], strict=True):
            n = next((k for k, t in enumerate(row) if t in stop), len(row))
            gens.append(Generation(
                text=self.tokenizer.decode(row[:n], skip_special_tokens=True),
                prompt_tokens=int(mask.sum()), new_tokens=n,
                finish_reason="stop" if n < len(row) else "length",
            ))
        return gens
