"""Utterance emotion labels from a fine-tuned causal LM: label scoring (default) or free generation (the paper's).

Label scoring: the log-likelihood of every label's answer (label tokens + end-of-turn token) after the prompt. Each
prompt is encoded once; all answers then run in *one* extra forward pass over its KV cache, packed side by side in
a single row with a 4D attention mask, so each answer token sees the prompt and the earlier tokens of its own answer
only (no copy of the cache per label). The argmax is always a valid label, and `probs` is the softmax over the label
scores. `scoring` picks the score (`SCORINGS`):
- "sum" (default): the summed token log-probs, the answer's log-likelihood; it favours labels of few tokens, since
  every extra token can only lower it;
- "mean": the mean token log-prob (length-normalised), fair to labels of different token lengths;
- "first": the log-prob of the answer's first token only (no second forward pass); it needs labels whose first
  tokens differ under the model's tokenizer (`check_scoring`).
The ONNX Runtime path (`bioserc.models.onnx_llm_scoring`) computes the same scores from an `onnx-llm` export.

Generation: greedy decoding, 10 new tokens, the text before the end-of-turn marker stripped and matched exactly
against the labels (paper-notes 5.5). Anything else is an invalid output: `INVALID` with all-zero probs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from bioserc.batching import length_sorted_chunks
from bioserc.devices import resolve_device
from bioserc.models.collate import BioKey, missing_bios
from bioserc.models.llm_encoding import ChatEncoder, utterance_bio
from bioserc.models.predict import Prediction
from bioserc.prompts.erc_llm import ErcPromptConfig
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)

INVALID = "<invalid>"  # label of a generated answer that is not exactly one of the labels
MODES = ("score", "generate")
SCORINGS = ("sum", "mean", "first")
TORCH_LLM_KINDS = ("lora-adapter", "hf-llm")  # the rest of `bioserc.artifacts.LLM_KINDS` is "onnx-llm"


def check_scoring(scoring: str, labels: Sequence[str], answers: Sequence[Sequence[int]]) -> None:
    """A known scoring; "first" only when no two labels' answers start with the same token (else ties by design)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring {scoring!r} is not one of {SCORINGS}")
    if scoring != "first":
        return
    by_token: dict[int, list[str]] = defaultdict(list)
    for label, answer in zip(labels, answers, strict=True):
        by_token[answer[0]].append(label)
    clashes = [" / ".join(map(repr, group)) for group in by_token.values() if len(group) > 1]
    if clashes:
        raise ValueError(
            f"scoring 'first' needs labels whose answers start with different tokens, but "
            f"{'; '.join(clashes)} share their first token under this tokenizer; use scoring 'sum' or "
            "'mean'"
        )


def first_token_scores(first: torch.Tensor, answers: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, K): each answer's first-token log-prob, from the (B, V) log-probs after each prompt."""
    return first[:, [a[0] for a in answers]]


def per_label(sums: torch.Tensor, answers: Sequence[Sequence[int]], scoring: str) -> torch.Tensor:
    """Summed answer log-likelihoods (B, K) as `scoring` asks: kept ("sum") or divided by the answer lengths."""
    if scoring == "mean":
        return sums / torch.tensor([len(a) for a in answers], dtype=sums.dtype, device=sums.device)
    return sums


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[b, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def label_loglik(
    model: Any, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int, scoring: str = "sum"
) -> torch.Tensor:
    """(B, K) scores of K answers after each of B prompts (token ids; prompts left-padded here), per `scoring`."""
    return label_logliks(model, prompts, answers, pad_id, first_only=scoring == "first")[scoring]


@torch.inference_mode()
def label_logliks(
    model: Any,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int,
    first_only: bool = False,
) -> dict[str, torch.Tensor]:
    """Every scoring's (B, K) label scores from one pass ({"first", "sum", "mean"}; only "first" if `first_only`),
    so a benchmark compares scorings on identical forward passes.

    Forward 1 runs the prompts and keeps their KV cache ("first" stops there). Forward 2 feeds the
    T = sum(len(answer)) answer tokens of every label as one block per row: mask[t, s] lets block token t see the
    prompt and block tokens s of its own answer with s <= t; its position is prompt length + offset in the answer.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=not first_only, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): the distribution of every answer's first token
    scores = {"first": first_token_scores(first, answers).cpu()}
    if first_only:
        return scores

    owner = torch.tensor([k for k, a in enumerate(answers) for _ in a], device=device)
    offset = torch.tensor([j for a in answers for j in range(len(a))], device=device)
    block = torch.tensor([t for a in answers for t in a], device=device)
    n_prompt, n_block, batch = ids.shape[1], len(block), len(prompts)
    own = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])  # (T, T)
    allowed = torch.cat(
        [mask.bool()[:, None, :].expand(batch, n_block, n_prompt), own.expand(batch, n_block, n_block)], dim=-1
    )  # (B, T, P + T)
    dtype = model.get_input_embeddings().weight.dtype  # the dtype attention runs in (LoRA weights may be fp32)
    mask4d = torch.zeros(batch, 1, n_block, n_prompt + n_block, dtype=dtype, device=device)
    mask4d.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    block_positions = mask.sum(-1, keepdim=True) + offset[None, :]  # (B, T)
    out2 = model(
        input_ids=block.expand(batch, n_block),
        attention_mask=mask4d,
        position_ids=block_positions,
        past_key_values=out.past_key_values,
        use_cache=True,
    )
    later = out2.logits.float().log_softmax(-1)  # (B, T, V): block token t predicts token t + 1 of its answer

    token_lp = first[:, block]  # (B, T); right for offset 0
    prev = (torch.arange(n_block, device=device) - 1).clamp(min=0)
    inner = later[:, prev, :].gather(-1, block.expand(batch, n_block)[..., None]).squeeze(-1)
    token_lp = torch.where(offset[None, :] == 0, token_lp, inner)
    sums = torch.zeros(batch, len(answers), device=device).index_add_(1, owner, token_lp)
    return {**scores, **{scoring: per_label(sums, answers, scoring).cpu() for scoring in ("sum", "mean")}}


@torch.inference_mode()
def generate_texts(
    model: Any, encoder: ChatEncoder, prompts: Sequence[Sequence[int]], max_new_tokens: int = 10
) -> list[str]:
    """Greedy answers, cut at the end-of-turn marker (or EOS) and stripped."""
    from transformers import GenerationConfig

    ids, mask = left_pad(prompts, encoder.pad_id, model.device)  # a torch model or optimum's ORTModelForCausalLM
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=encoder.stop_ids or None,
        pad_token_id=encoder.pad_id,
        bos_token_id=model.generation_config.bos_token_id,
    )
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    stops = [s for s in (encoder.end_of_turn, encoder.tokenizer.eos_token, encoder.tokenizer.pad_token) if s]
    return [
        parse_answer(encoder.tokenizer.decode(row, skip_special_tokens=False), stops)
        for row in out[:, ids.shape[1] :].tolist()
    ]


def parse_answer(text: str, stops: Sequence[str]) -> str:
    """The paper's parsing: the text before the first stop marker, stripped; no normalisation or fuzzy match."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.strip()


class GeneratedLabel(NamedTuple):
    prediction: Prediction
    text: str  # the raw answer after stripping
    valid: bool


def encoder_from_artifact(directory: str, manifest: dict[str, Any]) -> ChatEncoder:
    """The `ChatEncoder` an LLM artifact was trained with: its tokenizer (chat template included), labels and prompt
    settings from the (verified) manifest."""
    from transformers import AutoTokenizer

    from bioserc.artifacts import ArtifactError

    if "prompt" not in manifest or "labels" not in manifest:
        raise ValueError(
            f"{directory!r} is a {manifest['kind']} artifact without an ERC prompt and labels: "
            "not an emotion classifier written by `bioserc train llm` / `bioserc merge` (or the "
            "`bioserc export onnx-llm` of a merged one)"
        )
    prompt = ErcPromptConfig.from_dict(manifest["prompt"])
    if manifest.get("bio_mode", prompt.bio_mode) != prompt.bio_mode:  # onnx-llm states it for pipelines to plan with
        raise ArtifactError(
            f"{directory!r}: manifest bio_mode {manifest['bio_mode']!r} differs from its prompt's "
            f"{prompt.bio_mode!r}; re-export the artifact"
        )
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return ChatEncoder(tokenizer, manifest["labels"], prompt)


@contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """eval() for the call and the caller's mode back afterwards (training evaluates mid-run); an ONNX Runtime
    model has no modes."""
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


class LlmClassifier:
    """A fine-tuned causal LM as an `UtteranceClassifier` (labels, model_id, bio_mode, predict).

    Args:
        model: a causal LM (plain, merged or a peft model), already on its device.
        encoder: the `ChatEncoder` the model was trained with.
        model_id: the artifact's manifest hash ("in-memory" during training).
        mode: "score" (label scoring; always a valid label) or "generate" (free generation, may be `INVALID`).
        scoring: label score in score mode: "sum", "mean" or "first" (see the module docstring).
        max_new_tokens: generation budget.
    """

    def __init__(
        self,
        model: Any,
        encoder: ChatEncoder,
        model_id: str = "in-memory",
        mode: str = "score",
        scoring: str = "sum",
        max_new_tokens: int = 10,
    ):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        check_scoring(scoring, encoder.labels, encoder.answers)
        self.model, self.encoder, self.model_id, self.mode = model, encoder, model_id, mode
        self.labels = list(encoder.labels)
        self.bio_mode = encoder.prompt.bio_mode
        self.scoring, self.max_new_tokens = scoring, max_new_tokens

    @classmethod
    def from_pretrained(
        cls, directory: str, device: str = "auto", base_model: str | None = None, dtype: str = "auto", **kwargs: Any
    ) -> LlmClassifier:
        """Load a `bioserc train llm` adapter (kind lora-adapter, on its base model) or a merged folder (hf-llm)."""
        from peft.utils import CONFIG_NAME as ADAPTER_CONFIG
        from transformers import AutoModelForCausalLM
        from transformers.utils import CONFIG_NAME

        from bioserc.artifacts import artifact_file, manifest_id, verify_artifact
        from bioserc.embedded import resolve_model

        manifest = verify_artifact(directory, TORCH_LLM_KINDS)  # every file in the folder is listed, so all verified
        encoder = encoder_from_artifact(directory, manifest)
        # the file from_pretrained starts from must be in the folder (a serve-only hf-llm folder holds no weights)
        artifact_file(directory, manifest, CONFIG_NAME if manifest["kind"] == "hf-llm" else ADAPTER_CONFIG)
        device = resolve_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        options = {
            "dtype": getattr(torch, dtype),
            "attn_implementation": "sdpa" if device.startswith("cuda") else "eager",
            "use_safetensors": True,
        }
        if manifest["kind"] == "hf-llm":
            model = AutoModelForCausalLM.from_pretrained(directory, **options)
        else:
            from peft import PeftModel

            base = resolve_model(base_model or manifest["base_model"])
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **options), directory)
        return cls(model.to(device).eval(), encoder, manifest_id(directory), **kwargs)

    def scores(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, K) label scores of a batch of prompt ids, per `self.scoring` (the runtime-specific step)."""
        return label_loglik(self.model, prompts, self.encoder.answers, self.encoder.pad_id, self.scoring)

    def _prompts(self, conversations: Sequence[Conversation], bios: Mapping[BioKey, str] | None):
        if self.bio_mode != "none":
            n_missing = len(missing_bios(conversations, bios))
            if n_missing:
                logger.warning("%d speaker(s) had no bio and were classified with an empty one", n_missing)
        keys, prompts = [], []
        for conv in conversations:
            for i, utt in enumerate(conv.utterances):
                keys.append((conv.id, utt.index))
                prompts.append(self.encoder.prompt_ids(conv, i, utterance_bio(bios, conv, i)))
        return keys, prompts

    def _batches(self, prompts: list[list[int]], batch_size: int, progress: bool, desc: str):
        chunks = length_sorted_chunks([len(p) for p in prompts], batch_size)  # little padding per batch
        return tqdm(chunks, desc=desc, unit="batch", disable=not progress)

    def predict(
        self,
        conversations: Sequence[Conversation],
        bios: Mapping[BioKey, str] | None = None,
        batch_size: int = 8,
        progress: bool = False,
        max_utterances: int | None = None,
    ) -> list[Prediction]:
        """One `Prediction` per utterance, in input order (in generate mode, invalid answers get label INVALID).

        `batch_size` prompts (one per utterance) go into each forward pass; `max_utterances`, the pipelines'
        per-pass utterance budget, lowers that further when given.
        """
        batch_size = min(batch_size, max_utterances or batch_size)
        if self.mode == "generate":
            return [g.prediction for g in self.generate(conversations, bios, batch_size, progress)]
        keys, prompts = self._prompts(conversations, bios)
        out: list[Prediction | None] = [None] * len(keys)
        with _evaluating(self.model):
            for chunk in self._batches(prompts, batch_size, progress, "scoring labels"):
                for n, row in zip(chunk, self.scores([prompts[n] for n in chunk]).softmax(-1), strict=True):
                    out[n] = Prediction(*keys[n], self.labels[int(row.argmax())], row.tolist())
        return out  # type: ignore[return-value]

    def generate(
        self,
        conversations: Sequence[Conversation],
        bios: Mapping[BioKey, str] | None = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[GeneratedLabel]:
        """Free generation (paper-notes 5.5): exact match after stripping, else INVALID with all-zero probs."""
        keys, prompts = self._prompts(conversations, bios)
        out: list[GeneratedLabel | None] = [None] * len(keys)
        with _evaluating(self.model):
            for chunk in self._batches(prompts, batch_size, progress, "generating labels"):
                texts = generate_texts(self.model, self.encoder, [prompts[n] for n in chunk], self.max_new_tokens)
                for n, text in zip(chunk, texts, strict=True):
                    valid = text in self.labels
                    probs = [float(label == text) for label in self.labels]
                    out[n] = GeneratedLabel(Prediction(*keys[n], text if valid else INVALID, probs), text, valid)
        return out  # type: ignore[return-value]
