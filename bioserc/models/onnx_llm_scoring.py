"""LLM label scoring on ONNX Runtime, from the `onnx-llm` export of a merged LLM (`bioserc export onnx-llm`).

The prompts, labels and prompt settings are the PyTorch `LlmClassifier`'s (the export's manifest carries them from
the merged folder), and so is the prefix reuse: each prompt is prefilled once, then every label's answer is scored
from that KV cache. The PyTorch path packs all answers into one row with a 4D attention mask; an optimum export
(`text-generation-with-past`) takes a 2D mask only, so here the cache is repeated once per label as batch rows and
the answers (minus their last token, which predicts nothing) run right-padded in one more forward pass. Those copies
cost memory: batch x labels rows of the prompt's cache (8 prompts x 7 labels = 56 rows at the default batch size),
so lower the batch size for long prompts on a large model. The graph is fp32, as `export_llm` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bioserc.models.llm_scoring import LlmClassifier, encoder_from_artifact, first_token_scores, left_pad, per_label


ONNX_FILE = "model.onnx"


@torch.inference_mode()
def ort_label_loglik(
    model: Any, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int, scoring: str = "sum"
) -> torch.Tensor:
    """(B, K) scores of K answers after each of B prompts, as `llm_scoring.label_loglik`, with an
    `optimum.onnxruntime.ORTModelForCausalLM`.

    Row b * K + k of the second pass holds answer k after prompt b: the prompt's cache and mask, then the answer's
    tokens at positions prompt length + offset; padding after them is masked and, coming last, seen by no real token.
    """
    ids, mask = left_pad(prompts, pad_id, model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=scoring != "first")
    first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): the distribution of every answer's first token
    sums = first_token_scores(first, answers)
    width = max(map(len, answers)) - 1
    if scoring == "first" or not width:
        return per_label(sums, answers, scoring).cpu()
    batch, n_labels = ids.shape[0], len(answers)

    def rows(values: Sequence[Sequence[int]]) -> torch.Tensor:  # (K, width) right-padded, then repeated per prompt
        padded = [list(v) + [0] * (width - len(v)) for v in values]
        return torch.tensor(padded, dtype=torch.long, device=ids.device).repeat(batch, 1)

    inputs, targets = rows([a[:-1] for a in answers]), rows([a[1:] for a in answers])
    known = rows([[1] * (len(a) - 1) for a in answers])
    inputs = inputs.masked_fill(known == 0, pad_id)
    past = tuple(tuple(t.repeat_interleave(n_labels, 0) for t in layer) for layer in out.past_key_values)
    lengths = mask.sum(-1).repeat_interleave(n_labels)[:, None]
    out2 = model(
        input_ids=inputs,
        attention_mask=torch.cat([mask.repeat_interleave(n_labels, 0), known], -1),
        position_ids=lengths + torch.arange(width, device=ids.device)[None],
        past_key_values=past,
        use_cache=False,
    )
    later = out2.logits.float().log_softmax(-1)  # (B * K, width, V): input j predicts answer token j + 1
    token_lp = later.gather(-1, targets[..., None]).squeeze(-1) * known
    return per_label(sums + token_lp.sum(-1).view(batch, n_labels), answers, scoring).cpu()


def ort_causal_lm(directory: str, provider: str = "auto", threads: int | None = None) -> Any:
    """optimum's `ORTModelForCausalLM` on the folder's model.onnx, with bioserc's session options (`threads` intra-op
    threads, no spin-waiting) and execution providers (CUDA or CPU: a decoder's shapes change every call, and the
    TensorRT EP would build an engine for each)."""
    try:
        from optimum.onnxruntime import ORTModelForCausalLM
    except ImportError as err:
        raise ImportError(
            "ONNX LLM scoring needs onnxruntime and optimum-onnx: pip install 'bioserc[cpu]' (or "
            "'bioserc[gpu]' for CUDA)"
        ) from err
    from bioserc.runtime import CPU, CUDA, ort_providers, session_options

    return ORTModelForCausalLM.from_pretrained(
        directory,
        file_name=ONNX_FILE,
        use_cache=True,
        local_files_only=True,
        providers=ort_providers(provider, candidates=(CUDA, CPU)),
        session_options=session_options(threads),
    )


class OnnxLlmClassifier(LlmClassifier):
    """An `onnx-llm` artifact as an `UtteranceClassifier`: `LlmClassifier`'s prompts, batching and generation, with
    label scores from `ort_label_loglik`."""

    @classmethod
    def from_artifact(
        cls,
        directory: str,
        provider: str = "auto",
        threads: int | None = None,
        manifest: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> OnnxLlmClassifier:
        """Load the export, verified first (`manifest`: what `verify_artifact` already returned for it).

        Args:
            provider: "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU), "cuda" or "cpu".
            threads: intra-op threads of the session; None: every CPU this process may use.
            kwargs: mode, scoring, max_new_tokens (`LlmClassifier`).
        """
        from transformers.utils import CONFIG_NAME

        from bioserc.artifacts import artifact_file, manifest_id, verify_artifact

        manifest = manifest or verify_artifact(directory, "onnx-llm")
        encoder = encoder_from_artifact(directory, manifest)
        for name in (CONFIG_NAME, ONNX_FILE):  # what optimum opens: a clear error unless listed (= verified)
            artifact_file(directory, manifest, name)
        return cls(ort_causal_lm(directory, provider, threads), encoder, manifest_id(directory), **kwargs)

    def scores(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        return ort_label_loglik(self.model, prompts, self.encoder.answers, self.encoder.pad_id, self.scoring)
