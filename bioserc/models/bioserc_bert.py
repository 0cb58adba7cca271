"""BERT-based BiosERC: the AccumWR classifier (paper-notes section 4) plus a speaker-bio head, on any HF encoder.

    encoder(±window, target marked) -> masked mean over the target span -> Linear+tanh  = utterance vectors
    + sinusoidal positions -> 1 conversation-level Transformer layer (or a BiGRU, `context`)  = context vectors
    intra-speaker / inter-speaker masked multi-head attention over the context vectors
    logits = W_ctx(ctx) + W_utt(utt) + W_intra(intra) + W_inter(inter) [+ bio head]

The bio head reads each speaker's profile (`profile`): a text bio mean-pooled by the same encoder ("text"), or a
vector from `bioserc bios --profile scores|latent` through LayerNorm + Linear + tanh to the encoder width; either
way the result is fused the same way (`bio_mode` mlp or attn), so the two fusions compare across profiles.

The reference code's defects are fixed here: every parameter is optimised (not only the encoder), the loss takes
logits (no softmax before cross-entropy), speaker masks are built per conversation so batches > 1 are correct, bios
work with batches > 1, and bios are mean-pooled instead of read through the randomly initialised pooler.

`BiosercBertConfig` / `BiosercBert` are a transformers `PretrainedConfig` / `PreTrainedModel` (model type
"bioserc-bert", registered with `AutoConfig` / `AutoModel` when this module is imported), so a saved folder loads with
`BiosercBert.from_pretrained(dir)` or `AutoModel.from_pretrained(dir)`, offline and without remote code. The folder
holds config.json (these settings + the encoder's config as `encoder_config`), model.safetensors, the tokenizer files
(the tokenizer is loaded with the model and kept as `model.tokenizer`) and labels.txt; nothing is pickled. Folders
written before this class was a `PreTrainedModel` (no `model_type` in config.json) load the same way.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

from bioserc.bios.profiles import VECTOR_PROFILES
from bioserc.labels import get_label_set
from bioserc.models.bigru import BiGRU


HEAD_BIO_MODES = ("mlp", "attn", "none")
CONTEXTS = ("transformer", "gru")
HEAD_PROFILES = ("text", *VECTOR_PROFILES)  # what the bio head reads; "text" also covers emotion bios (text too)
CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE = "config.json", "model.safetensors", "labels.txt"
MODEL_TYPE = "bioserc-bert"


class BiosercBertConfig(PretrainedConfig):
    """The classifier's settings (`FIELDS`) and its encoder's config.

    Args:
        encoder: embedded model name or local HF folder; only read when building from the encoder.
        label_set: meld | emorynlp | iemocap.
        labels: label names in logit order; empty = the label set's order.
        window: ± neighbours around the target, past and future (paper: 2 for MELD/EmoryNLP, 4 for IEMOCAP).
        bio_mode: "mlp" (the paper's `static` head), "attn" (attention over the conversation's bios), "none".
        profile: the speaker profiles the bio head reads: "text" (bio text, encoded by the encoder) or "scores" /
            "latent" (a vector per speaker, projected); ignored with bio_mode none.
        profile_dim: entries of each profile vector (set from the train data); 0 for text.
        context: the conversation-level layer: "transformer" (the paper's one Transformer layer) or "gru" (a
            bidirectional GRU added to its input, for long calls: IEMOCAP in docs/BENCHMARKS.md).
        positions: add sinusoidal utterance positions before the conversation-level layer (a GRU knows the order
            without them).
        speaker_hidden: intra/inter attention width; None = half the encoder width (paper: 512).
        ctx_ffn: FFN width of the context Transformer; None = twice the encoder width (paper: 2048).
        heads: attention heads of the context layer and the speaker/bio attentions.
        dropout: before every head and inside the speaker/bio attentions (paper).
        ctx_dropout: inside the context Transformer layer (PyTorch's default, which the paper kept).
        max_length: tokens per utterance window (the paper allows 512).
        bio_max_length: tokens per bio.
        freeze_layers: embeddings + this many bottom encoder layers are frozen (paper: 10 of roberta-large's 24).
        encoder_layers: keep only the encoder's bottom N layers (0: all): a shallower, faster encoder that starts
            from the pretrained weights (top layers dropped, Sajjad et al. 2020).
        encode_chunk: at inference, at most this many windows (or bios) per encoder call, so a call of thousands of
            turns does not hold the activations of all its windows at once.
        encoder_config: the encoder's `PretrainedConfig` (or its dict); set by `BiosercBert.from_encoder`.
    """

    model_type = MODEL_TYPE
    FIELDS = (
        "encoder",
        "label_set",
        "labels",
        "window",
        "bio_mode",
        "profile",
        "profile_dim",
        "context",
        "positions",
        "speaker_hidden",
        "ctx_ffn",
        "heads",
        "dropout",
        "ctx_dropout",
        "max_length",
        "bio_max_length",
        "freeze_layers",
        "encoder_layers",
        "encode_chunk",
    )

    def __init__(
        self,
        encoder: str = "minilm",
        label_set: str = "meld",
        labels: list[str] | None = None,
        window: int = 2,
        bio_mode: str = "mlp",
        profile: str = "text",
        profile_dim: int = 0,
        context: str = "transformer",
        positions: bool = True,
        speaker_hidden: int | None = None,
        ctx_ffn: int | None = None,
        heads: int = 8,
        dropout: float = 0.2,
        ctx_dropout: float = 0.1,
        max_length: int = 256,
        bio_max_length: int = 128,
        freeze_layers: int = 0,
        encoder_layers: int = 0,
        encode_chunk: int = 256,
        encoder_config: PretrainedConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if bio_mode not in HEAD_BIO_MODES:
            raise ValueError(f"bio_mode must be one of {HEAD_BIO_MODES}, got {bio_mode!r}")
        if profile not in HEAD_PROFILES:
            raise ValueError(f"profile must be one of {HEAD_PROFILES}, got {profile!r}")
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if profile in VECTOR_PROFILES and bio_mode != "none" and profile_dim < 1:
            raise ValueError(f"profile {profile} needs profile_dim, the size of its vectors, got {profile_dim}")
        if encoder_layers < 0:
            raise ValueError(f"encoder_layers must be 0 (all) or a layer count, got {encoder_layers}")
        if encode_chunk < 1:
            raise ValueError(f"encode_chunk must be at least 1, got {encode_chunk}")
        labels = list(labels or get_label_set(label_set).labels)
        for key in ("id2label", "label2id", "num_labels"):  # always derived from `labels`
            kwargs.pop(key, None)
        super().__init__(id2label=dict(enumerate(labels)), label2id={y: i for i, y in enumerate(labels)}, **kwargs)
        self.encoder, self.label_set, self.labels, self.window = encoder, label_set, labels, window
        self.bio_mode, self.speaker_hidden, self.ctx_ffn, self.heads = bio_mode, speaker_hidden, ctx_ffn, heads
        self.profile, self.profile_dim, self.context, self.positions = profile, profile_dim, context, positions
        self.dropout, self.ctx_dropout, self.freeze_layers = dropout, ctx_dropout, freeze_layers
        self.encoder_layers = encoder_layers
        self.max_length, self.bio_max_length, self.encode_chunk = max_length, bio_max_length, encode_chunk
        if isinstance(encoder_config, dict):
            encoder_config = AutoConfig.for_model(**encoder_config)
        self.encoder_config = encoder_config

    def settings(self) -> dict[str, Any]:
        """The classifier's own settings (`FIELDS`), without the encoder config or transformers' bookkeeping."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def to_diff_dict(self) -> dict[str, Any]:
        # transformers drops values equal to its generic defaults, and `max_length` is one of its generation
        # settings (default 20): a model with max_length 20 would reload with this class's default instead.
        return {**super().to_diff_dict(), **self.settings()}

    def _get_non_default_generation_parameters(self) -> dict[str, Any]:
        # Nothing here generates text: `max_length` is the tokens per window, not a generation setting to warn about.
        return {}


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
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
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


class BiosercBert(PreTrainedModel):
    """Args:
    config: the settings; `config.encoder_config` builds a randomly initialised encoder when `encoder` is None
        (`from_pretrained` then loads the weights).
    encoder: a pretrained HF encoder (`from_encoder`).
    tokenizer: the encoder's tokenizer, kept as `self.tokenizer` for `Collator` and saved with the model.
    """

    config_class = BiosercBertConfig
    main_input_name = "input_ids"

    def __init__(self, config: BiosercBertConfig, encoder: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(config)
        if encoder is None:
            if config.encoder_config is None:
                raise ValueError(
                    "BiosercBertConfig.encoder_config is not set: build the model with "
                    "BiosercBert.from_encoder(config) or load it with from_pretrained"
                )
            encoder = AutoModel.from_config(config.encoder_config)
        config.encoder_config = encoder.config
        self.encoder, self.tokenizer = encoder, tokenizer
        _drop_pooler(encoder)
        hidden = encoder.config.hidden_size
        spk = config.speaker_hidden or hidden // 2
        for width, name in ((hidden, "encoder hidden size"), (spk, "speaker_hidden")):
            if width % config.heads:
                raise ValueError(f"{name} {width} is not divisible by heads={config.heads}")
        self.utt_proj = nn.Linear(hidden, hidden)
        if config.context == "gru":
            self.context = BiGRU(hidden)
        else:
            layer = nn.TransformerEncoderLayer(
                hidden, config.heads, config.ctx_ffn or 2 * hidden, config.ctx_dropout, batch_first=True
            )
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
            if config.profile in VECTOR_PROFILES:  # LayerNorm: probabilities and hidden states differ in scale
                self.profile_proj = nn.Sequential(
                    nn.LayerNorm(config.profile_dim), nn.Linear(config.profile_dim, hidden), nn.Tanh()
                )
        self.freeze(config.freeze_layers)
        self.post_init()

    def initialize_weights(self) -> None:
        """Nothing to do: the encoder is pretrained (or loaded next) and every other layer keeps the default
        initialisation its PyTorch constructor gave it; transformers' generic re-initialisation would overwrite
        both."""

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

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

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """(N, T) token windows -> (N, H) pooled states; outside training, `config.encode_chunk` windows per encoder
        call, so peak activation memory does not grow with the number of windows (rows are encoded independently,
        so the result is the same). A batch within one chunk is never sliced, which keeps the ONNX trace free of a
        fixed-size Slice."""
        step = self.config.encode_chunk
        if self.training or len(input_ids) <= step:
            return masked_mean(
                self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, pool_mask
            )
        return torch.cat(
            [
                self.encode(input_ids[i : i + step], attention_mask[i : i + step], pool_mask[i : i + step])
                for i in range(0, len(input_ids), step)
            ]
        )

    def contextualize(self, utt: torch.Tensor, utt_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, H) utterance vectors -> context vectors: sinusoidal positions (`positions`), then the Transformer
        layer, or the BiGRU's states added to its input."""
        x = utt + sinusoid(utt.shape[1], utt.shape[2], utt.device, utt.dtype) if self.config.positions else utt
        if self.config.context == "gru":
            return x + self.context(x, utt_mask)
        return self.context(x, src_key_padding_mask=~utt_mask)

    def speaker_attention(
        self, attn: nn.MultiheadAttention, x: torch.Tensor, allowed: torch.Tensor, utt_mask: torch.Tensor
    ) -> torch.Tensor:
        """Self-attention of x (B, L, D) where utterance q may look at utterance k only if allowed[b, q, k]."""
        allowed = allowed & utt_mask.unsqueeze(1) & utt_mask.unsqueeze(2)
        # A row with nothing to look at (padding, or the only speaker of a conversation in the inter-speaker view)
        # would softmax over nothing and give NaN: let it attend to itself.
        eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
        allowed = allowed | (eye & ~allowed.any(-1, keepdim=True))
        mask = (~allowed).repeat_interleave(attn.num_heads, dim=0)  # (B*heads, L, L), batch-major as MHA expects
        return attn(x, x, x, attn_mask=mask, need_weights=False)[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_mask: torch.Tensor,
        utt_position: torch.Tensor,
        utt_mask: torch.Tensor,
        utt_speaker: torch.Tensor,
        bio_input_ids: torch.Tensor | None = None,
        bio_attention_mask: torch.Tensor | None = None,
        speaker_bio: torch.Tensor | None = None,
        speaker_mask: torch.Tensor | None = None,
        speaker_profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, C) for B conversations padded to L utterances; see `Collator` for the inputs."""
        n_conv, n_utt = utt_mask.shape
        utt = torch.tanh(self.utt_proj(self.encode(input_ids, attention_mask, target_mask)))  # (N, H)
        hidden = utt.shape[-1]
        utt = utt.new_zeros(n_conv * n_utt, hidden).index_copy(0, utt_position, utt).view(n_conv, n_utt, hidden)
        ctx = self.contextualize(utt, utt_mask)
        same = utt_speaker.unsqueeze(2) == utt_speaker.unsqueeze(1)  # (B, L, L)
        intra = self.speaker_attention(self.intra, self.intra_proj(ctx), same, utt_mask)
        inter = self.speaker_attention(self.inter, self.inter_proj(ctx), ~same, utt_mask)
        drop = self.dropout
        logits = (
            self.head_ctx(drop(ctx))
            + self.head_utt(drop(utt))
            + self.head_intra(drop(intra))
            + self.head_inter(drop(inter))
        )
        if self.config.bio_mode == "none":
            return logits
        if self.config.profile in VECTOR_PROFILES:
            conv_bios = self.profile_proj(speaker_profile)  # (B, S, D) -> (B, S, H)
        else:
            bios = self.encode(bio_input_ids, bio_attention_mask, bio_attention_mask)  # (U, H): each bio once
            conv_bios = bios[speaker_bio]  # (B, S, H)
        own = conv_bios.gather(1, utt_speaker.unsqueeze(-1).expand(-1, -1, hidden))  # (B, L, H)
        if self.config.bio_mode == "mlp":
            return logits + self.head_bio(drop(own))
        attended = self.bio_attn(utt + own, conv_bios, conv_bios, key_padding_mask=~speaker_mask, need_weights=False)[
            0
        ]
        return logits + self.head_bio(drop(attended))

    # ------------------------------------------------------------------------------------------------ save / load

    @classmethod
    def from_encoder(cls, config: BiosercBertConfig) -> BiosercBert:
        """A new classifier on a pretrained encoder (local folder or embedded name; the Hub is never contacted)."""
        from bioserc.embedded import MODELS, resolve_model

        path = resolve_model(config.encoder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            encoder_config = AutoConfig.from_pretrained(path, local_files_only=True)
        except OSError as err:
            raise ValueError(
                f"encoder {config.encoder!r} is neither an embedded model ({', '.join(MODELS)}) nor a "
                "local Hugging Face model folder; the Hub is never contacted, so download it once "
                "(e.g. `hf download FacebookAI/roberta-large --local-dir models/roberta-large`) "
                "and pass the folder"
            ) from err
        if config.encoder_layers:
            available = encoder_config.num_hidden_layers
            if config.encoder_layers > available:
                raise ValueError(f"encoder_layers={config.encoder_layers} but {config.encoder!r} has {available}")
            # The config's smaller layer count makes from_pretrained build and load only the bottom layers.
            encoder_config.num_hidden_layers = config.encoder_layers
        encoder = AutoModel.from_pretrained(path, config=encoder_config, local_files_only=True)
        return cls(config, encoder, tokenizer)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """transformers' `save_pretrained` (config.json, model.safetensors) plus the tokenizer and labels.txt."""
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        self.tokenizer.save_pretrained(save_directory)
        with open(os.path.join(save_directory, LABELS_FILE), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{label}\n" for label in self.config.labels))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, *args: Any, device: torch.device | str | None = None, **kwargs: Any
    ) -> BiosercBert:
        """Load a saved folder (local only) with its tokenizer, onto `device`; every weight must be in the file.

        `device` may also be given positionally (`from_pretrained(folder, "cpu")`); `AutoModel.from_pretrained`
        passes its own keyword arguments through.
        """
        if args:
            device, *rest = args
            if rest:
                raise TypeError(f"from_pretrained takes a folder and a device, got extra arguments {rest}")
        kwargs.setdefault("local_files_only", True)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        if problems := {k: v for k, v in info.items() if v}:
            raise ValueError(f"{pretrained_model_name_or_path}: the saved weights do not match the model: {problems}")
        model.tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, local_files_only=True)
        return model if device is None else model.to(device)


AutoConfig.register(MODEL_TYPE, BiosercBertConfig, exist_ok=True)
AutoModel.register(BiosercBertConfig, BiosercBert, exist_ok=True)
