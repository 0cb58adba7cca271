"""BERT-based BiosERC: the AccumWR classifier (paper-notes section 4) plus a speaker-bio head, on any HF encoder.

    encoder(±window, target marked) -> masked mean over the target span -> Linear+tanh  = utterance vectors
    + sinusoidal positions -> 1 conversation-level Transformer layer                      = context vectors
    intra-speaker / inter-speaker masked multi-head attention over the context vectors
    logits = W_ctx(ctx) + W_utt(utt) + W_intra(intra) + W_inter(inter) [+ bio head]

The reference code's defects are fixed here: every parameter is optimised (not only the encoder), the loss takes
logits (no softmax before cross-entropy), speaker masks are built per conversation so batches > 1 are correct, bios
work with batches > 1, and bios are mean-pooled instead of read through the randomly initialised pooler.
A saved model folder holds config.json (this config + the encoder's), model.safetensors, the tokenizer files and
labels.txt; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bioserc.labels import get_label_set


logger = logging.getLogger(__name__)

BIO_MODES = ("mlp", "attn", "none")
CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE = "config.json", "model.safetensors", "labels.txt"


@dataclass
class BiosercBertConfig:
    encoder: str = "minilm"  # embedded model name or local HF folder; only read when building from the encoder
    label_set: str = "meld"
    labels: list[str] = field(default_factory=list)  # label names in logit order; empty = the label set's order
    window: int = 2  # ± neighbours around the target, past and future (paper: 2 for MELD/EmoryNLP, 4 for IEMOCAP)
    bio_mode: str = "mlp"  # "mlp" (the paper's `static` head), "attn" (attention over the conversation's bios), "none"
    speaker_hidden: int | None = None  # intra/inter attention width; None = half the encoder width (paper: 512)
    ctx_ffn: int | None = None  # FFN width of the context Transformer; None = twice the encoder width (paper: 2048)
    heads: int = 8
    dropout: float = 0.2  # before every head and inside the speaker/bio attentions (paper)
    ctx_dropout: float = 0.1  # inside the context Transformer layer (PyTorch's default, which the paper kept)
    max_length: int = 256  # tokens per utterance window (the paper allows 512)
    bio_max_length: int = 128
    freeze_layers: int = 0  # embeddings + this many bottom encoder layers are frozen (paper: 10 of roberta-large's 24)

    def __post_init__(self) -> None:
        if self.bio_mode not in BIO_MODES:
            raise ValueError(f"bio_mode must be one of {BIO_MODES}, got {self.bio_mode!r}")
        if not self.labels:
            self.labels = list(get_label_set(self.label_set).labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BiosercBertConfig:
        """Keys missing from an older checkpoint take today's defaults; unknown keys are dropped with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown BiosercBertConfig keys %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T, H), (N, T) -> (N, H): the mean over the positions where mask is 1."""
    mask = mask.to(states.dtype).unsqueeze(-1)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def sinusoid(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(length, dim) sinusoidal position encoding of utterance positions (Vaswani et al. 2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, :dim // 2]
    return pe.to(dtype)


def _drop_pooler(encoder: nn.Module) -> None:
    # Utterances and bios are mean-pooled; an unused pooler would be saved and would never get a gradient.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


def _layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer blocks: the ModuleList as long as the config's layer count."""
    n = encoder.config.num_hidden_layers
    found = next((m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == n), None)
    if found is None:
        raise ValueError(f"cannot find the {n} layers of {type(encoder).__name__} to freeze; set freeze_layers: 0")
    return found


class BiosercBert(nn.Module):
    def __init__(self, config: BiosercBertConfig, encoder: nn.Module, tokenizer) -> None:
        super().__init__()
        self.config, self.encoder, self.tokenizer = config, encoder, tokenizer
        _drop_pooler(encoder)
        hidden = encoder.config.hidden_size
        spk = config.speaker_hidden or hidden // 2
        for width, name in ((hidden, "encoder hidden size"), (spk, "speaker_hidden")):
            if width % config.heads:
                raise ValueError(f"{name} {width} is not divisible by heads={config.heads}")
        self.utt_proj = nn.Linear(hidden, hidden)
        layer = nn.TransformerEncoderLayer(hidden, config.heads, config.ctx_ffn or 2 * hidden, config.ctx_dropout,
                                           batch_first=True)
        self.context = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.intra_proj, self.inter_proj = nn.Linear(hidden, spk), nn.Linear(hidden, spk)
        self.intra = nn.MultiheadAttention(spk, config.heads, dropout=config.dropout, batch_first=True)
        self.inter = nn.MultiheadAttention(spk, config.heads, dropout=config.dropout, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        n = config.num_labels
        self.head_ctx, self.head_utt = nn.Linear(hidden, n), nn.Linear(hidden, n)
        self.head_intra, self.head_inter = nn.Linear(spk, n), nn.Linear(spk, n)
        if config.bio_mode == "attn":
            self.bio_attn = nn.MultiheadAttention(hidden, config.heads, dropout=config.dropout, batch_first=True)
        if config.bio_mode != "none":
            self.head_bio = nn.Linear(hidden, n)
        self.freeze(config.freeze_layers)

    def freeze(self, n_layers: int) -> None:
        """Freeze the embeddings and the bottom n layers (n = 0 trains the whole encoder)."""
        if n_layers <= 0:
            return
        layers = _layers(self.encoder)
        if n_layers > len(layers):
            raise ValueError(f"freeze_layers={n_layers} but the encoder has only {len(layers)} layers")
        embeddings = getattr(self.encoder, "embeddings", None)
        if embeddings is None:
            embeddings = self.encoder.get_input_embeddings()
        for module in (embeddings, *layers[:n_layers]):
            module.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, H)
        return masked_mean(states, pool_mask)

    def speaker_attention(self, attn: nn.MultiheadAttention, x: torch.Tensor, allowed: torch.Tensor,
                          utt_mask: torch.Tensor) -> torch.Tensor:
        """Self-attention of x (B, L, D) where utterance q may look at utterance k only if allowed[b, q, k]."""
        allowed = allowed & utt_mask.unsqueeze(1) & utt_mask.unsqueeze(2)
        # A row with nothing to look at (padding, or the only speaker of a conversation in the inter-speaker view)
        # would softmax over nothing and give NaN: let it attend to itself.
        eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
        allowed = allowed | (eye & ~allowed.any(-1, keepdim=True))
        mask = (~allowed).repeat_interleave(attn.num_heads, dim=0)  # (B*heads, L, L), batch-major as MHA expects
        return attn(x, x, x, attn_mask=mask, need_weights=False)[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor,
                utt_position: torch.Tensor, utt_mask: torch.Tensor, utt_speaker: torch.Tensor,
                bio_input_ids: torch.Tensor | None = None, bio_attention_mask: torch.Tensor | None = None,
                speaker_bio: torch.Tensor | None = None, speaker_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, C) for B conversations padded to L utterances; see `Collator` for the inputs."""
        n_conv, n_utt = utt_mask.shape
        utt = torch.tanh(self.utt_proj(self.encode(input_ids, attention_mask, target_mask)))  # (N, H)
        hidden = utt.shape[-1]
        utt = utt.new_zeros(n_conv * n_utt, hidden).index_copy(0, utt_position, utt).view(n_conv, n_utt, hidden)
        ctx = self.context(utt + sinusoid(n_utt, hidden, utt.device, utt.dtype), src_key_padding_mask=~utt_mask)
        same = utt_speaker.unsqueeze(2) == utt_speaker.unsqueeze(1)  # (B, L, L)
        intra = self.speaker_attention(self.intra, self.intra_proj(ctx), same, utt_mask)
        inter = self.speaker_attention(self.inter, self.inter_proj(ctx), ~same, utt_mask)
        drop = self.dropout
        logits = (self.head_ctx(drop(ctx)) + self.head_utt(drop(utt)) + self.head_intra(drop(intra))
                  + self.head_inter(drop(inter)))
        if self.config.bio_mode == "none":
            return logits
        bios = self.encode(bio_input_ids, bio_attention_mask, bio_attention_mask)  # (U, H): each distinct bio once
        conv_bios = bios[speaker_bio]  # (B, S, H)
        own = conv_bios.gather(1, utt_speaker.unsqueeze(-1).expand(-1, -1, hidden))  # (B, L, H)
        if self.config.bio_mode == "mlp":
            return logits + self.head_bio(drop(own))
        attended = self.bio_attn(utt + own, conv_bios, conv_bios, key_padding_mask=~speaker_mask,
                                 need_weights=False)[0]
        return logits + self.head_bio(drop(attended))

    # ------------------------------------------------------------------------------------------------ save / load

    @classmethod
    def from_encoder(cls, config: BiosercBertConfig) -> BiosercBert:
        """A new classifier on a pretrained encoder (local folder or embedded name; the Hub is never contacted)."""
        from transformers import AutoModel, AutoTokenizer

        from bioserc.embedded import MODELS, resolve_model

        path = resolve_model(config.encoder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            encoder = AutoModel.from_pretrained(path, local_files_only=True)
        except OSError as err:
            raise ValueError(f"encoder {config.encoder!r} is neither an embedded model ({', '.join(MODELS)}) nor a "
                             "local Hugging Face model folder; the Hub is never contacted, so download it once "
                             "(e.g. `hf download FacebookAI/roberta-large --local-dir models/roberta-large`) "
                             "and pass the folder") from err
        return cls(config, encoder, tokenizer)

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        meta = {**self.config.to_dict(), "encoder_config": self.encoder.config.to_dict()}
        with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(directory)
        with open(os.path.join(directory, LABELS_FILE), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{label}\n" for label in self.config.labels))

    @classmethod
    def from_pretrained(cls, directory: str, device: torch.device | str = "cpu") -> BiosercBert:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        encoder_config = AutoConfig.for_model(**meta.pop("encoder_config"))
        model = cls(BiosercBertConfig.from_dict(meta), AutoModel.from_config(encoder_config),
                    AutoTokenizer.from_pretrained(directory, local_files_only=True))
        model.load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE), device=str(device)))
        return model.to(device)
