"""The ONNX runtime labels without torch: `FolderTokenizer` gives the ids transformers' fast tokenizer gives for the
same folder, `Collator(tensors="np")` builds the same batch as the torch one, and an `OnnxClassifier` predicts in a
process that never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from bioserc.models.collate import Collator
from bioserc.models.folder_tokenizer import FolderTokenizer
from bioserc.models.settings import ClassifierSettings
from bioserc.schema import Conversation, Utterance


ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [ROOT / "serving_artifacts" / name for name in ("default", "meld-minilm")]  # mpnet and MiniLM tokenizers
TEXTS = [" Joey: How you doin'?", "", " Ross: WE WERE ON A BREAK!!", " Ms. Émilie: café, naïve — 42%", "x " * 300]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_ids_match_transformers(folder):
    ours, theirs = FolderTokenizer(str(folder)), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for special in (True, False):
        assert (
            ours(TEXTS, add_special_tokens=special)["input_ids"]
            == theirs(TEXTS, add_special_tokens=special)["input_ids"]
        )
    assert ours("x")["input_ids"] == theirs("x")["input_ids"]
    for name in ("sep_token_id", "eos_token_id", "pad_token_id", "model_max_length"):
        assert getattr(ours, name) == getattr(theirs, name), name
    padded = ours(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="np")
    expected = theirs(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="np")
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(padded[key], expected[key])
    assert padded["input_ids"].shape[1] == 16  # the long text was cut, with its special tokens kept
    assert ours(TEXTS[:1])["input_ids"] == theirs(TEXTS[:1])["input_ids"]  # truncation does not stick


def test_numpy_batches_equal_torch_batches():
    folder = FOLDERS[0]
    settings = ClassifierSettings.from_file(str(folder / "config.json"))
    conv = Conversation(
        "c1",
        [
            Utterance(i, s, t, label="neutral")
            for i, (s, t) in enumerate([("A", "hi there"), ("B", "what?"), ("A", "no")])
        ],
    )
    torch_batch = Collator(AutoTokenizer.from_pretrained(str(folder), local_files_only=True), settings)([conv])
    np_batch = Collator(FolderTokenizer(str(folder)), settings, tensors="np")([conv])
    assert set(torch_batch.inputs) == set(np_batch.inputs)
    for key, value in torch_batch.inputs.items():
        assert isinstance(np_batch.inputs[key], np.ndarray), key
        np.testing.assert_array_equal(value.numpy(), np_batch.inputs[key])
        assert value.numpy().dtype == np_batch.inputs[key].dtype, key
    np.testing.assert_array_equal(torch_batch.labels.numpy(), np_batch.labels)


def test_settings_are_fields_of_the_pytorch_config():
    from bioserc.models.bioserc_bert import BiosercBertConfig

    assert {f.name for f in fields(ClassifierSettings)} <= set(BiosercBertConfig.FIELDS)


def test_missing_config_field_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"labels": ["a"]}')
    with pytest.raises(ValueError, match=r"config\.json.*window"):
        ClassifierSettings.from_file(str(tmp_path / "config.json"))


def test_onnx_classifier_never_imports_torch():
    code = (
        "import sys\n"
        "from bioserc.models.onnx_classifier import OnnxClassifier\n"
        "from bioserc.readers import read_conversations\n"
        f"clf = OnnxClassifier({str(FOLDERS[1])!r}, provider='cpu', threads=1)\n"
        f"preds = clf.predict(list(read_conversations({str(ROOT / 'examples' / 'transcripts')!r})))\n"
        "assert preds and all(p.label in clf.labels for p in preds)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_bioserc_label_with_an_onnx_model_never_imports_torch(tmp_path):
    """Beam's RunInference would import torch through its model manager (`pipelines/__init__.py` keeps it out)."""
    code = (
        "import sys\n"
        "from bioserc.cli import main\n"
        f"code = main(['label', {str(ROOT / 'examples' / 'transcripts')!r}, '-o', {str(tmp_path / 'out')!r}, "
        "'--no-bios', '--model', 'meld-minilm'])\n"
        "print(code, sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert (tmp_path / "out" / "utterances.jsonl").read_text().count("\n") == 76  # every demo utterance labelled
