"""ONNX Runtime backend: the same greedy bios as the transformers backend, without PyTorch doing the matrix work.

It loads a folder that already holds an exported decoder with past key/values (optimum's `text-generation-with-past`
task); exporting is a separate, slow step, never done implicitly here. Batching and decoding are shared with the
transformers backend (`HFGenerationBackend`), so both see identical token sequences.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from bioserc.bios.hf_generation import HFGenerationBackend


logger = logging.getLogger(__name__)


class OrtBackend(HFGenerationBackend):
    """Args:
    model_dir: an ONNX export folder (model.onnx with past key/values, config.json, tokenizer files).
    provider: "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU), "cuda", "cpu", or a full provider name
        such as "CPUExecutionProvider" (`bioserc.runtime.ort_providers`; TensorRT is never used for a decoder).
    batch_size: prompts per `generate` call.
    threads: intra-op threads of the session (`bioserc.runtime.session_options`: no spin-waiting); None: every
        usable CPU.
    share_prefix: prefill the prompt prefix a batch's prompts share once (`HFGenerationBackend`).
    """

    name = "onnx"

    def __init__(
        self,
        model_dir: str,
        provider: str = "auto",
        batch_size: int = 8,
        threads: int | None = None,
        share_prefix: bool = True,
    ):
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"ONNX model folder not found: {model_dir}")
        if not any(name.endswith(".onnx") for name in os.listdir(model_dir)):
            raise FileNotFoundError(
                f"{model_dir} holds no .onnx model; export the merged model first, e.g. "
                f"`optimum-cli export onnx --task text-generation-with-past --model MERGED_DIR {model_dir}`"
            )
        try:
            from optimum.onnxruntime import ORTModelForCausalLM
            from transformers import AutoTokenizer
        except ImportError as err:
            raise ImportError(
                "the onnx backend needs onnxruntime and optimum-onnx: pip install 'bioserc[cpu]' "
                "(or 'bioserc[gpu]' for CUDA)"
            ) from err
        from bioserc.artifacts import MANIFEST, verify_artifact
        from bioserc.runtime import CPU, CUDA, ort_providers, session_options

        self.providers = ort_providers(provider, candidates=(CUDA, CPU))
        if os.path.isfile(os.path.join(model_dir, MANIFEST)):
            verify_artifact(model_dir, "onnx-llm")  # every file checked before the tokenizer or a session reads one
        else:
            logger.warning(
                "%s has no %s (a plain optimum export): its files cannot be verified; `bioserc export "
                "onnx-llm` writes one",
                model_dir,
                MANIFEST,
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = ORTModelForCausalLM.from_pretrained(
            model_dir, use_cache=True, providers=self.providers, session_options=session_options(threads)
        )
        self.batch_size, self.share_prefix, self.counts = batch_size, share_prefix, Counter()
        self.model_id = "onnx:" + os.path.basename(os.path.normpath(model_dir))
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 8192))
