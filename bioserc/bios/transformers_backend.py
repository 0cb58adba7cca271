"""PyTorch/transformers backend: the default, running the embedded SmolLM2-135M-Instruct on CPU.

Batching matters on CPU: prompts are sorted by length and left-padded so one `generate` call serves a batch with
little padding; the generated part is everything after the (padded) prompt length.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bioserc.bios.backend import Generation, GenerationConfig, LLMBackend, Messages
from bioserc.bios.backends import length_sorted_chunks, render_chat


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend(LLMBackend):
    """Args:
        model: a local HF folder (or a hub id the user can reach; bioserc itself never downloads).
        batch_size: prompts per `generate` call.
        device: "auto", "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16".
        attn_implementation: None picks "eager" on CPU (sdpa is much slower there with batch > 1) and sdpa on CUDA.
        trust_remote_code: only when the user asks for it.
    """

    name = "transformers"

    def __init__(self, model: str, batch_size: int = 8, device: str = "auto", dtype: str = "auto",
                 attn_implementation: str | None = None, trust_remote_code: bool = False):
        self.device = pick_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        attn = attn_implementation or ("sdpa" if self.device.startswith("cuda") else "eager")
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model, dtype=getattr(torch, dtype), attn_implementation=attn, use_safetensors=True,
            trust_remote_code=trust_remote_code,
        ).to(self.device).eval()
        self.batch_size = batch_size
        self.model_id = os.path.basename(os.path.normpath(model)) if os.path.isdir(model) else model
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 8192))

    def render(self, messages: Messages) -> str:
        return render_chat(self.tokenizer, messages)

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        prompts = [self.render(m) for m in batch]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        results: list[Generation | None] = [None] * len(prompts)
        for chunk in length_sorted_chunks(lengths, self.batch_size):
            for i, gen in zip(chunk, self._generate_chunk([prompts[i] for i in chunk], config), strict=True):
                results[i] = gen
        return results  # type: ignore[return-value]

    def _generate_chunk(self, prompts: list[str], config: GenerationConfig) -> list[Generation]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs = {"max_new_tokens": config.max_new_tokens, "do_sample": config.do_sample,
                  "pad_token_id": self.tokenizer.pad_token_id, "repetition_penalty": config.repetition_penalty,
                  "no_repeat_ngram_size": config.no_repeat_ngram_size}
        if config.do_sample:
            torch.manual_seed(config.seed)
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]  # slice by tokens: the prompt never leaks into the bio
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gens = []
        for row, mask in zip(new.tolist(), enc["attention_mask"], strict=True):
            n = next((k for k, t in enumerate(row) if t in eos), len(row))
            gens.append(Generation(
                text=self.tokenizer.decode(row[:n], skip_special_tokens=True),
                prompt_tokens=int(mask.sum()), new_tokens=n,
                finish_reason="stop" if n < len(row) else "length",
            ))
        return gens
