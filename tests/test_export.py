"""Exports: the BiosERC classifier to ONNX (fp32 parity, int8 agreement, loading, tampering), execution-provider
selection, the LoRA-merged LLM to ONNX with KV cache (greedy parity), and the TensorRT-LLM guard, sizing and serve
instructions. Tiny random models built here; nothing is downloaded.

    /work/venv/bin/python -m pytest -q tests/test_export.py
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bioserc.artifacts import ArtifactError, manifest_hash, verify_artifact, write_manifest
from bioserc.models import BiosercBert, BiosercBertConfig, Collator, predict
from bioserc.models.classifier import load_classifier
from bioserc.schema import Conversation, Utterance


pytest.importorskip("onnxruntime")

MELD = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
WORDS = ["okay", "wow", "scared", "sad", "happy", "gross", "angry", "the", "you", "we", "what", "really", "fine",
         "why", "yes", "no", "is", "calm", "loud", "kind", "tired", "and", "friendly", "nervous"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small only pay for thread synchronisation on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_encoder(directory: Path) -> str:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", "_", "0", "1", "2", "speaker", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    return str(directory)


def conversations() -> list[Conversation]:
    """Two conversations of different lengths and speaker counts, plus a one-speaker one."""
    rng = np.random.default_rng(0)

    def conv(cid: str, n: int, speakers: int) -> Conversation:
        utts = [Utterance(i, f"SPEAKER_{i % speakers}", " ".join(rng.choice(WORDS[:16], rng.integers(2, 7))),
                          label=MELD[(i * 3) % 7]) for i in range(n)]
        return Conversation(cid, utts, {"label_set": "meld"})

    return [conv("a", 7, 3), conv("b", 3, 2), conv("c", 2, 1)]


def bios_for(convs: list[Conversation]) -> dict[tuple[str, str], str]:
    bios = {(c.id, s): f"{s} is calm and {WORDS[17 + k % 7]}" for c in convs for k, s in enumerate(c.speakers)}
    bios.pop(("a", "SPEAKER_2"))  # one speaker without a bio: encoded as an empty one, as in PyTorch
    return bios


def save_checkpoint(encoder: str, out: Path, bio_mode: str) -> str:
    torch.manual_seed(1)
    model = BiosercBert.from_encoder(BiosercBertConfig(encoder=encoder, bio_mode=bio_mode, max_length=48,
                                                       bio_max_length=24, heads=2)).eval()
    model.save_pretrained(str(out))
    write_manifest(str(out), "pytorch-classifier", model_family="bioserc-bert", label_set="meld", labels=MELD,
                   window=2, bio_mode=bio_mode, metrics={"dev_weighted_f1": 0.5})
    return str(out)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return make_encoder(tmp_path_factory.mktemp("enc") / "encoder")


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory) -> dict:
    """One mlp-bio checkpoint exported fp32 and int8 (the export is the slow part; tests share it)."""
    from bioserc.export.onnx_classifier import export_classifier

    root = tmp_path_factory.mktemp("onnx")
    source = save_checkpoint(encoder, root / "torch", "mlp")
    fp32 = export_classifier(source, str(root / "fp32"))
    int8 = export_classifier(source, str(root / "int8"), quantize=True)
    return {"source": source, "fp32": str(root / "fp32"), "int8": str(root / "int8"), "fp32_manifest": fp32,
            "int8_manifest": int8}


def torch_logits(model: BiosercBert, convs, bios) -> tuple[torch.Tensor, torch.Tensor]:
    batch = Collator(model.tokenizer, model.config)(convs, bios)
    with torch.no_grad():
        return model(**batch.inputs), batch.inputs["utt_mask"]


@pytest.mark.parametrize("bio_mode", ["mlp", "attn", "none"])
def test_fp32_export_matches_pytorch_logits(encoder, tmp_path, bio_mode):
    from bioserc.export.onnx_classifier import export_classifier
    from bioserc.models.onnx_classifier import OnnxClassifier

    source = save_checkpoint(encoder, tmp_path / "torch", bio_mode)
    manifest = export_classifier(source, str(tmp_path / "onnx"))
    model = BiosercBert.from_pretrained(source).eval()
    clf = OnnxClassifier(str(tmp_path / "onnx"), provider="cpu", threads=1)
    convs, bios = conversations()[:2], bios_for(conversations())
    expected, mask = torch_logits(model, convs, bios)
    batch = Collator(model.tokenizer, model.config)(convs, bios)
    got = torch.from_numpy(clf.logits(batch.inputs))
    assert got.shape == expected.shape == (2, 7, 7)
    assert float((got - expected)[mask].abs().max()) <= 1e-4
    assert manifest["parity"]["fp32_encoder_max_abs_diff"] <= 1e-4
    assert manifest["parity"]["fp32_head_max_abs_diff"] <= 1e-4
