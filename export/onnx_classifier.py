"""Export a trained `BiosercBert` folder to ONNX: two graphs, optionally int8, with a checksummed manifest.

    bioserc export onnx --model runs/meld-minilm/best -o serving_artifacts/meld-minilm-onnx [--quantize] [--optimize]
    bioserc export onnx --model runs/sweeps/meld_profiles/meld/scores/seed-2/best -o serving_artifacts/meld-onnx \\
        --quantize --seed-results runs/sweeps/meld_profiles/results.json --seed-variant meld/scores  # W-F1 mean ± std

The export boundary (why two graphs, and where the cut is):

    encoder.onnx   input_ids [N, T] int64, attention_mask [N, T] int64, pool_mask [N, T] float32
                   -> pooled [N, H]: the HF encoder and the masked mean over `pool_mask` (`BiosercBert.encode`)
    head.onnx      utterances [B, L, H] (pooled windows scattered per conversation, zeros for padding),
                   utterance_mask [B, L] bool, utterance_speaker [B, L] int64,
                   speaker_bios [B, S, H] + speaker_mask [B, S] bool (only when bio_mode != "none"), or for a
                   scores/latent profile model speaker_profiles [B, S, D] float32 (the profile vectors) in place
                   of speaker_bios
                   -> logits [B, L, C]: utterance MLP (Linear+tanh), positions, the context Transformer (or BiGRU),
                   intra/inter-speaker attention, every head, the profile projection and the bio head

  * One encoder graph serves both inputs the model encodes: utterance windows (pool_mask = the marked target span)
    and bios (pool_mask = the attention mask, i.e. every real token, exactly as `BiosercBert.forward` pools bios).
    The utterance MLP applies to windows only, so it lives in the head, not after the pooling: bios then cost no
    wasted projection and the encoder graph stays a plain "BERT + mean pool" that every execution provider
    (TensorRT EP included) handles well.
  * The conversation-level part gets its own graph because its inputs are ragged per batch (the N windows are
    scattered into B x L slots, each distinct bio is encoded once and indexed per speaker). Doing that bookkeeping
    in numpy between two graphs keeps both graphs free of data-dependent scatter/gather over Python-built index
    lists, lets the encoder batch be padded or bucketed independently of the conversation batch, and lets
    `--quantize` treat the encoder, which holds nearly all the FLOPs, on its own terms; the head's masks and sums
    stay fp32 and only its weights are stored in int8 (mpnet's head: 27 -> 10 MB, MELD valid W-F1 unchanged).
  * A profile model's vectors need no encoder: the head takes them as they are and projects them itself
    (`profile_proj`), so they cross the boundary as plain float inputs, like the pooled bios of the text path.
  * Dynamic axes: N and T for the encoder; B, L and S for the head. H, D and C are fixed by the checkpoint.

The head graph re-states `BiosercBert.forward` after the encoder call with the same submodules and helpers. Two
things are written differently, with identical values: the scatter of utterance vectors moved into the runtime, and
the speaker-attention identity mask compares two aranges instead of using a boolean `torch.eye` (which exports to a
boolean EyeLike that onnxruntime does not implement). While tracing, MHA's packed q/k/v projection is swapped for
three plain matmuls (`_in_projection_separate`): PyTorch's packed version freezes the sample's sequence length into
a Reshape. `export_classifier` runs both graphs against PyTorch on two shapes (the traced one and another) and
records the max abs differences in the manifest, and tests/test_export.py compares end-to-end logits, so a
change to the model's forward that this file does not follow fails loudly.

Export uses `torch.onnx.export(dynamo=False)` (the TorchScript exporter, as optimum-onnx does) with PyTorch's MHA /
Transformer fast paths switched off, since their fused kernels have no ONNX form. `--optimize` runs onnxruntime's
transformer optimizer (fused attention/LayerNorm/GELU) on the encoder. `--quantize weights` (the release format)
stores the encoder's MatMul weights (per block of 32) and embedding tables (per row) in int8 (weight_only.py), and
the head's MatMul weights too; `--bits 4` makes the encoder's MatMul weights 4-bit (manifest `precision: "int4"`).
`--quantize dynamic` runs `onnxruntime.quantization.quantize_dynamic` on the encoder (activations quantized per call
too, per-tensor unless `per_channel`, MatMul/Attention only; manifest `precision: "int8"`). On the measured 2-vCPU
AVX2 machine neither optimisation nor dynamic int8 made ONNX Runtime faster than PyTorch
(shared/docs/dependencies.md section 6); bench/export_bench.py measures speed and int8's label agreement for a
trained model and docs/BENCHMARKS.md records them: dynamic int8 misses the 99% agreement bar, hence
weight-only int8 for the default artifact. A graph file over 45 MB keeps its weights in `encoder-NN.data` shards
beside it (sharding.py), listed in the manifest's `external_data`, so every file stays under a git host's limits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bioserc.artifacts import manifest_id, verify_artifact, write_manifest
from bioserc.bios.profiles import VECTOR_PROFILES
from bioserc.export._staging import check_target, publish
from bioserc.export.model_card import load_seed_results, write_model_card
from bioserc.export.sharding import shard_graph
from bioserc.export.weight_only import BITS, BLOCK_SIZE, OPSET, quantize_weights
from bioserc.fsutil import staging_dir
from bioserc.models.bioserc_bert import CONFIG_FILE, LABELS_FILE, BiosercBert, masked_mean
from bioserc.models.collate import Bio
from bioserc.schema import Conversation, Utterance


logger = logging.getLogger(__name__)

ENCODER_FILE, HEAD_FILE = "encoder.onnx", "head.onnx"
EXTRA_FILES = ("dev_report.json",)  # copied beside the graphs when the source has them


class EncoderGraph(nn.Module):
    """encoder + masked mean: (input_ids, attention_mask, pool_mask) -> pooled (N, H). `BiosercBert.encode` without
    its inference-time chunking, which would trace into Slices of a fixed size; the runtime chunks instead."""

    def __init__(self, model: BiosercBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        states = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(states, pool_mask)


class HeadGraph(nn.Module):
    """`BiosercBert.forward` after the encoder, on utterance vectors already laid out as (B, L, H); eval mode, so
    the model's dropouts (identities) are left out."""

    def __init__(self, model: BiosercBert):
        super().__init__()
        self.model = model

    def forward(
        self,
        utterances: torch.Tensor,
        utterance_mask: torch.Tensor,
        utterance_speaker: torch.Tensor,
        speakers: torch.Tensor | None = None,
        speaker_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`speakers`: the pooled bios (B, S, H), or a profile model's vectors (B, S, D)."""
        m = self.model
        # PyTorch scatters projected vectors into zeros; here padding rows are projected too, then zeroed.
        utt = torch.tanh(m.utt_proj(utterances)) * utterance_mask.unsqueeze(-1).to(utterances.dtype)
        hidden = utt.shape[-1]
        ctx = m.contextualize(utt, utterance_mask)
        same = utterance_speaker.unsqueeze(2) == utterance_speaker.unsqueeze(1)
        intra = self.speaker_attention(m.intra, m.intra_proj(ctx), same, utterance_mask)
        inter = self.speaker_attention(m.inter, m.inter_proj(ctx), ~same, utterance_mask)
        logits = m.head_ctx(ctx) + m.head_utt(utt) + m.head_intra(intra) + m.head_inter(inter)
        if m.config.bio_mode == "none":
            return logits
        if m.config.profile in VECTOR_PROFILES:
            speakers = m.profile_proj(speakers)
        own = speakers.gather(1, utterance_speaker.unsqueeze(-1).expand(-1, -1, hidden))
        if m.config.bio_mode == "mlp":
            return logits + m.head_bio(own)
        attended = m.bio_attn(utt + own, speakers, speakers, key_padding_mask=~speaker_mask, need_weights=False)[0]
        return logits + m.head_bio(attended)

    @staticmethod
    def speaker_attention(
        attn: nn.MultiheadAttention, x: torch.Tensor, allowed: torch.Tensor, utt_mask: torch.Tensor
    ) -> torch.Tensor:
        """`BiosercBert.speaker_attention` with the identity built by comparing aranges: torch.eye(dtype=bool)
        exports as a boolean EyeLike, which onnxruntime does not implement."""
        allowed = allowed & utt_mask.unsqueeze(1) & utt_mask.unsqueeze(2)
        steps = torch.arange(allowed.shape[-1], device=allowed.device)
        eye = steps.unsqueeze(1) == steps.unsqueeze(0)
        allowed = allowed | (eye & ~allowed.any(-1, keepdim=True))
        mask = (~allowed).repeat_interleave(attn.num_heads, dim=0)
        return attn(x, x, x, attn_mask=mask, need_weights=False)[0]


def _in_projection_separate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MHA's q/k/v input projection as three matmuls. PyTorch's packed self-attention version (one matmul, then
    unflatten/transpose/squeeze) traces with the sample's sequence length frozen into a Reshape, so an exported
    nn.TransformerEncoderLayer or self-attention MultiheadAttention fails on any other length."""
    w_q, w_k, w_v = w.chunk(3)
    b_q, b_k, b_v = b.chunk(3) if b is not None else (None, None, None)
    return F.linear(q, w_q, b_q), F.linear(k, w_k, b_k), F.linear(v, w_v, b_v)


@contextlib.contextmanager
def _exportable() -> Iterator[None]:
    """Trace-friendly PyTorch for the duration of an export: no fused MHA/Transformer fast path (no ONNX form), the
    unpacked q/k/v projection, and no exporter chatter."""
    before, packed = torch.backends.mha.get_fastpath_enabled(), F._in_projection_packed
    torch.backends.mha.set_fastpath_enabled(False)
    F._in_projection_packed = _in_projection_separate
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        F._in_projection_packed = packed
        torch.backends.mha.set_fastpath_enabled(before)


def _encoder_sample(model: BiosercBert, n: int, t: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    vocab = model.encoder.config.vocab_size
    input_ids = torch.randint(1, vocab, (n, t), generator=gen)
    attention_mask = torch.ones(n, t, dtype=torch.long)
    attention_mask[0, t - 2 :] = 0  # some padding
    pool_mask = torch.zeros(n, t)
    pool_mask[:, 1:3] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pool_mask": pool_mask}


def _head_sample(model: BiosercBert, b: int, length: int, speakers: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = model.encoder.config.hidden_size
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, length - 1 :] = False  # a shorter conversation
    sample = {
        "utterances": torch.randn(b, length, hidden, generator=gen) * mask.unsqueeze(-1),
        "utterance_mask": mask,
        "utterance_speaker": torch.randint(0, speakers, (b, length), generator=gen) * mask,
    }
    if model.config.bio_mode != "none":
        if model.config.profile in VECTOR_PROFILES:
            sample["speaker_profiles"] = torch.rand(b, speakers, model.config.profile_dim, generator=gen)
        else:
            sample["speaker_bios"] = torch.randn(b, speakers, hidden, generator=gen)
        sample["speaker_mask"] = torch.ones(b, speakers, dtype=torch.bool)
    return sample


def _export(
    module: nn.Module,
    sample: dict[str, torch.Tensor],
    path: str,
    dynamic: dict[str, dict[int, str]],
    output: str,
    output_axes: dict[int, str],
    opset: int,
) -> None:
    with _exportable(), torch.no_grad():
        torch.onnx.export(
            module,
            tuple(sample.values()),
            path,
            input_names=list(sample),
            output_names=[output],
            dynamic_axes={**{k: v for k, v in dynamic.items() if k in sample}, output: output_axes},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _ort_run(path: str, feeds: dict[str, torch.Tensor]) -> Any:
    from bioserc.runtime import CPU, make_session

    session = make_session(path, [CPU], threads=1)  # parity is measured on CPU, one thread: the same on every machine
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in feeds.items() if k in names})[0]


def _max_diff(module: nn.Module, path: str, samples: list[dict[str, torch.Tensor]]) -> float:
    worst = 0.0
    for sample in samples:
        with torch.no_grad():
            expected = module(*sample.values()).numpy()
        got = _ort_run(path, sample)
        if got.shape != expected.shape:
            raise RuntimeError(f"{os.path.basename(path)}: ONNX output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(abs(got - expected).max()))
    return worst


PARITY_TOLERANCE = 1e-3  # max abs logit difference an fp32 export may show against PyTorch


def _synthetic_batch(config) -> tuple[list[Conversation], dict[tuple[str, str], Bio]]:
    """Two conversations of different lengths (one with a single speaker) and bios (profile vectors for a profile
    model), one speaker without one."""
    words = "okay wow really fine why yes no sure hello well what the you we".split()

    def conv(cid: str, n: int, speakers: int) -> Conversation:
        return Conversation(
            cid,
            [
                Utterance(i, f"S{i % speakers}", " ".join(words[(i * 3 + k) % len(words)] for k in range(2 + i % 4)))
                for i in range(n)
            ],
        )

    convs = [conv("a", 6, 3), conv("b", 2, 1)]
    bios: dict[tuple[str, str], Bio] = {
        ("a", "S0"): "S0 is calm and kind",
        ("a", "S1"): "S1 is loud",
        ("b", "S0"): "S0 is tired",
    }
    if config.profile in VECTOR_PROFILES:
        gen = torch.Generator().manual_seed(0)
        bios = {key: torch.rand(config.profile_dim, generator=gen).tolist() for key in bios}
    return convs, bios


def _end_to_end_diff(model: BiosercBert, directory: str, fields: dict[str, Any]) -> float:
    """Max abs logit difference between `BiosercBert.forward` and the exported graphs run as `OnnxClassifier` runs
    them, on a synthetic batch: checks the head graph's re-statement of the forward, not only the tracing."""
    from bioserc.models.collate import Collator
    from bioserc.models.onnx_classifier import OnnxClassifier

    convs, bios = _synthetic_batch(model.config)
    batch = Collator(model.tokenizer, model.config)(convs, bios)
    with torch.no_grad():
        expected = model(**batch.inputs)
    write_manifest(directory, "onnx-classifier", **fields)  # provisional: OnnxClassifier reads a verified folder
    runtime = OnnxClassifier(directory, provider="cpu", threads=1)
    got = torch.from_numpy(runtime.logits(batch.inputs))
    return float((got - expected)[batch.inputs["utt_mask"]].abs().max())


def _optimize_encoder(path: str, encoder_config) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    # "bert" covers BERT-style encoders (BERT, RoBERTa, MiniLM); unmatched patterns are simply left unfused.
    optimized = optimize_model(
        path,
        model_type="bert",
        num_heads=encoder_config.num_attention_heads,
        hidden_size=encoder_config.hidden_size,
        opt_level=1,
        use_gpu=False,
    )
    optimized.save_model_to_file(path)


QUANT_OPS = ["MatMul", "Attention"]
QUANT_MODES = ("weights", "dynamic")


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def dynamic_int8(source: str, target: str, per_channel: bool) -> None:
    """`quantize_dynamic` of the encoder graph at `source` into `target` (what `--quantize dynamic` ships): int8
    MatMul/Attention weights, activations quantized per tensor on every call.

    Weights keep 7 bits (`reduce_range`): ONNX Runtime's u8 x s8 kernel on CPUs without VNNI (AVX2) adds pairs of
    products in 16 bits, which full-range weights overflow. On such a CPU the default artifact's labels agreed with
    fp32 on 38% of MELD valid (W-F1 27.2) with 8-bit weights and on 82% (W-F1 60.8) with 7-bit ones
    (docs/BENCHMARKS.md)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    advice = _DropMessage("pre-processing before quantization")  # logged on every call; the graph is exported fresh
    logging.getLogger().addFilter(advice)
    try:
        # DefaultTensorType: shape inference cannot type the outputs of the optimizer's fused com.microsoft ops
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=True,
            op_types_to_quantize=QUANT_OPS,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(advice)


def _quantize(path: str, per_channel: bool) -> None:
    fp32 = path + ".fp32"
    os.replace(path, fp32)
    try:
        dynamic_int8(fp32, path, per_channel)
    finally:
        os.remove(fp32)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
    }


def _check_options(
    quantize: str | None, per_channel: bool, bits: int, seed_results: str | None, seed_variant: str | None
) -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError("ONNX export checks the graphs with onnxruntime: pip install 'bioserc[cpu]'") from err
    if quantize not in (None, *QUANT_MODES):
        raise ValueError(f"quantize={quantize!r}: choose one of {QUANT_MODES}")
    if per_channel and quantize != "dynamic":
        raise ValueError("per_channel only applies to quantize='dynamic' (weight-only int8 has finer scales)")
    if bits != 8 and quantize != "weights":
        raise ValueError(f"bits={bits} only applies to quantize='weights' (weight-only); dynamic int8 is 8-bit")
    if bits not in BITS:
        raise ValueError(f"bits={bits}: choose one of {BITS}")
    if (seed_results is None) != (seed_variant is None):
        raise ValueError("seed_results (a results.json) and seed_variant (its DATASET/VARIANT row) go together")


class _Graphs:
    """The two exported graphs in a staging folder, with the PyTorch modules and samples that check them."""

    def __init__(self, model: BiosercBert, folder: str, opset: int) -> None:
        self.encoder, self.head = EncoderGraph(model).eval(), HeadGraph(model).eval()
        self.enc_path, self.head_path = os.path.join(folder, ENCODER_FILE), os.path.join(folder, HEAD_FILE)
        self.enc_samples = [_encoder_sample(model, 2, 9, 0), _encoder_sample(model, 3, 17, 1)]
        self.head_samples = [_head_sample(model, 2, 5, 3, 2), _head_sample(model, 3, 7, 4, 3)]
        _export(
            self.encoder,
            self.enc_samples[0],
            self.enc_path,
            {
                "input_ids": {0: "windows", 1: "tokens"},
                "attention_mask": {0: "windows", 1: "tokens"},
                "pool_mask": {0: "windows", 1: "tokens"},
            },
            "pooled",
            {0: "windows"},
            opset,
        )
        _export(
            self.head,
            self.head_samples[0],
            self.head_path,
            {
                "utterances": {0: "conversations", 1: "utterances"},
                "utterance_mask": {0: "conversations", 1: "utterances"},
                "utterance_speaker": {0: "conversations", 1: "utterances"},
                "speaker_bios": {0: "conversations", 1: "speakers"},
                "speaker_profiles": {0: "conversations", 1: "speakers"},
                "speaker_mask": {0: "conversations", 1: "speakers"},
            },
            "logits",
            {0: "conversations", 1: "utterances"},
            opset,
        )

    def encoder_diff(self) -> float:
        return _max_diff(self.encoder, self.enc_path, self.enc_samples)

    def head_diff(self) -> float:
        return _max_diff(self.head, self.head_path, self.head_samples)


def _compress(
    graphs: _Graphs, quantize: str | None, per_channel: bool, bits: int
) -> tuple[dict[str, Any] | None, list[str], str]:
    """Quantize the graphs in place: (the manifest's quantization record, the graphs changed, the precision)."""
    precision = f"int{bits}" if quantize else "fp32"
    if quantize == "weights":
        return (
            {
                "method": "weights",
                "weight_type": precision,
                "block_size": BLOCK_SIZE,
                "encoder_opset": OPSET,
                "tensors": len(quantize_weights(graphs.enc_path, bits)),
                "head_weight_type": "int8",
                "head_tensors": len(quantize_weights(graphs.head_path, 8)),
            },
            [ENCODER_FILE, HEAD_FILE],
            precision,
        )
    if quantize == "dynamic":
        _quantize(graphs.enc_path, per_channel)
        return (
            {"method": "dynamic", "weight_type": "QInt8", "per_channel": per_channel, "op_types": QUANT_OPS},
            [ENCODER_FILE],
            precision,
        )
    return None, [], precision


def export_classifier(
    model_dir: str,
    out_dir: str,
    quantize: str | None = None,
    optimize: bool = False,
    opset: int = 17,
    per_channel: bool = False,
    bits: int = 8,
    seed_results: str | None = None,
    seed_variant: str | None = None,
) -> dict[str, Any]:
    """Export `model_dir` (a verified pytorch-classifier artifact) into `out_dir`; return the new manifest.

    Args:
        quantize: "weights" (encoder weights in int8, or int4 with `bits`, with per-block / per-row scales, and the
            head's weights in int8; weight_only.py says why this is the release format) or "dynamic" (onnxruntime's
            quantize_dynamic on the encoder: activations quantized per call too, MatMul/Attention only).
        optimize: fuse attention/LayerNorm/GELU in the encoder first (onnxruntime.transformers.optimizer).
        per_channel: with "dynamic", int8 scales per output channel instead of per tensor.
        bits: with "weights", 8 or 4 bits per weight; 4 keeps a 109M-parameter encoder (mpnet) under GitHub's
            100 MB per file, where its int8 graph is 115 MB.
        seed_results, seed_variant: a `bench/sweep.py` results.json and its row "DATASET/VARIANT" (the settings this
            checkpoint was trained with): the model card then states weighted F1 as mean ± std over the row's seeds,
            and the manifest records them (`seed_results`). Both or neither; read before any export work.

    `out_dir` is written beside itself and renamed into place, so a failed export never leaves a half folder.
    """
    _check_options(quantize, per_channel, bits, seed_results, seed_variant)
    seeds = load_seed_results(seed_results, seed_variant) if seed_results and seed_variant else None
    check_target(out_dir)
    source = verify_artifact(model_dir, "pytorch-classifier")
    if seeds and seeds["dataset"] != source.get("label_set"):
        raise ValueError(
            f"seed results {seed_results}: row {seed_variant} is for {seeds['dataset']}, but "
            f"{model_dir} is a {source.get('label_set')} model"
        )
    model = BiosercBert.from_pretrained(model_dir).eval()
    config = model.config
    tmp = staging_dir(out_dir)
    try:
        graphs = _Graphs(model, tmp, opset)
        model.tokenizer.save_pretrained(tmp)
        for name in (CONFIG_FILE, LABELS_FILE, *EXTRA_FILES):
            if os.path.isfile(os.path.join(model_dir, name)):
                shutil.copy2(os.path.join(model_dir, name), os.path.join(tmp, name))
        fields = dict(
            model_family=source.get("model_family", "bioserc-bert"),
            label_set=config.label_set,
            labels=list(config.labels),
            window=config.window,
            context=config.context,
            positions=config.positions,
            encoder_layers=config.encoder_layers,
            bio_mode=config.bio_mode,
            profile=config.profile,
            profile_dim=config.profile_dim,
            max_length=config.max_length,
            bio_max_length=config.bio_max_length,
            graphs={"encoder": ENCODER_FILE, "head": HEAD_FILE},
            opset=opset,
        )
        parity = {
            "fp32_encoder_max_abs_diff": graphs.encoder_diff(),
            "fp32_head_max_abs_diff": graphs.head_diff(),
            "fp32_logits_max_abs_diff": _end_to_end_diff(model, tmp, fields),
        }
        if (worst := parity["fp32_logits_max_abs_diff"]) > PARITY_TOLERANCE:
            raise RuntimeError(
                f"the exported logits differ from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE}) "
                "on a synthetic batch; the artifact is not written"
            )
        if optimize:
            _optimize_encoder(graphs.enc_path, model.encoder.config)
            parity["optimized_encoder_max_abs_diff"] = graphs.encoder_diff()
            parity["optimized_logits_max_abs_diff"] = _end_to_end_diff(model, tmp, fields)
        quantization, quantized, precision = _compress(graphs, quantize, per_channel, bits)
        if quantize:
            parity[f"{precision}_encoder_max_abs_diff"] = graphs.encoder_diff()
            parity[f"{precision}_logits_max_abs_diff"] = _end_to_end_diff(model, tmp, fields)
        fields["external_data"] = [
            shard for graph in (graphs.enc_path, graphs.head_path) for shard in shard_graph(graph)
        ]
        write_model_card(tmp, fields, source.get("metrics", {}), parity, precision, out_dir, seeds, quantized)
        manifest = write_manifest(
            tmp,
            "onnx-classifier",
            **fields,
            precision=precision,
            quantized=quantized,
            quantization=quantization,
            optimized=[ENCODER_FILE] if optimize else [],
            parity=parity,
            versions=_versions(),
            source_checkpoint=manifest_id(model_dir),
            source_kind=source.get("kind"),
            metrics=source.get("metrics", {}),
            seed_results=seeds,
        )
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s -> %s (%s)", model_dir, out_dir, json.dumps(parity))
    return manifest
