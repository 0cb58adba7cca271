"""PyTorch/transformers backend: the default, running the embedded SmolLM2-135M-Instruct on CPU.

Batching matters on CPU: `HFGenerationBackend` sorts prompts by length and left-pads them, so one `generate` call
serves a batch with little padding.
"""

from __future__ import annotations

import os
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bioserc.bios.hf_generation import HFGenerationBackend
from bioserc.devices import resolve_device
from bioserc.models import grouped_attention


class TransformersBackend(HFGenerationBackend):
    """Args:
    model: a local HF folder (or a hub id the user can reach; bioserc itself never downloads).
    batch_size: prompts per `generate` call.
    device: "auto", "cpu", "cuda", "cuda:1", ...
    dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16".
    attn_implementation: None picks sdpa on CUDA and, on CPU, eager attention that reads each KV head once
        (`bioserc.models.grouped_attention`; sdpa with padding masks is much slower there with batch > 1).
    trust_remote_code: only when the user asks for it.
    threads: torch's intra-op CPU threads (process-wide); None leaves torch's default (every usable CPU).
    share_prefix: prefill the prompt prefix a batch's prompts share once (`HFGenerationBackend`).
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        threads: int | None = None,
        share_prefix: bool = True,
    ):
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        attn = attn_implementation or ("sdpa" if self.device.startswith("cuda") else grouped_attention.register())
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                model,
                dtype=getattr(torch, dtype),
                attn_implementation=attn,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
            )
            .to(self.device)
            .eval()
        )
        self.batch_size, self.share_prefix, self.counts = batch_size, share_prefix, Counter()
        self.model_id = os.path.basename(os.path.normpath(model)) if os.path.isdir(model) else model
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 8192))
