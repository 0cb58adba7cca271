"""LLM backends other than transformers: the ONNX Runtime backend (error paths, and a greedy round trip on a tiny
random Llama), the tensorrt-llm guard and the backend registry, fed the options the pipelines pass. The HTTP backend
has its own file (test_http_backend.py, against a fake server)."""

from __future__ import annotations

import logging
import pkgutil
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tiny_llm import TEXTS, tiny_llama

import bioserc.bios
from bioserc.artifacts import ArtifactError, write_manifest
from bioserc.bios.backends import BACKENDS, make_backend
from bioserc.bios.base import GenerationConfig
from bioserc.bios.cache import model_fingerprint
from bioserc.bios.chat import render_chat
from bioserc.bios.http_backend import OpenAICompatibleBackend
from bioserc.bios.ort_backend import OrtBackend
from bioserc.bios.trtllm_backend import TrtLlmBackend
from bioserc.jsonio import read_jsonl


GREEDY = GenerationConfig(max_new_tokens=12, seed=1234)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Describe people."}, {"role": "user", "content": text}]


def test_trtllm_without_tensorrt_llm_explains_where_it_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # makes `import tensorrt_llm` raise ImportError
    with pytest.raises(ImportError, match=r"Python 3\.12.*container"):
        TrtLlmBackend("/nonexistent/model")


def test_make_backend_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds: transformers, onnx, openai, trtllm"):
        make_backend("llamacpp", "smollm2")


def test_ort_backend_needs_an_exported_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no .onnx model.*optimum-cli export onnx"):
        OrtBackend(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        OrtBackend(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory) -> tuple[Path, Path]:
    """(HF folder, its plain optimum ONNX export: no manifest.json) of the tiny Llama."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("optimum.onnxruntime")
    from optimum.exporters.onnx import main_export

    root = tmp_path_factory.mktemp("ort")
    hf_dir, onnx_dir = root / "hf", root / "onnx"
    tiny_llama(hf_dir)
    main_export(str(hf_dir), output=str(onnx_dir), task="text-generation-with-past", do_validation=False)
    return hf_dir, onnx_dir


def test_ort_greedy_matches_pytorch(plain_export, caplog):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir, onnx_dir = plain_export
    prompts = [
        user("Ann is cheerful.") + [{"role": "assistant", "content": "Ann "}],
        user("Conversation transcript: Bob sounds tired, answers briefly. Describe Bob's mood."),
    ]

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    expected = []
    for messages in prompts:  # one prompt at a time: no padding on the reference side
        ids = tokenizer(render_chat(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=GREEDY.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                repetition_penalty=GREEDY.repetition_penalty,
                no_repeat_ngram_size=GREEDY.no_repeat_ngram_size,
            )
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        n = next((k for k, t in enumerate(new) if t in (tokenizer.eos_token_id, tokenizer.pad_token_id)), len(new))
        expected.append((tokenizer.decode(new[:n], skip_special_tokens=True), ids["input_ids"].shape[1], n))

    with caplog.at_level(logging.WARNING, logger="bioserc.bios.ort_backend"):
        backend = OrtBackend(str(onnx_dir), provider="CPUExecutionProvider", batch_size=2)
    assert "no manifest.json" in caplog.text  # loads, but says its files could not be verified
    gens = backend.generate(prompts, GREEDY)
    assert [(g.text, g.prompt_tokens, g.new_tokens) for g in gens] == expected
    assert any(g.text for g in gens)
    assert backend.count_tokens(prompts[0]) == expected[0][1]
    assert backend.model_id == "onnx:onnx" and backend.max_context == 2048


def test_make_backend_resolves_embedded_names_for_local_kinds(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("bioserc.embedded")
    fake.resolve_model = lambda name: calls.append(name) or str(tmp_path)  # a folder with no ONNX model in it
    monkeypatch.setitem(sys.modules, "bioserc.embedded", fake)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        make_backend("onnx", "smollm2", provider="CPUExecutionProvider")
    assert calls == ["smollm2"]


def test_ort_backend_verifies_a_manifest_before_loading(plain_export, tmp_path, caplog):
    """With a manifest.json, every file is checked first (a tampered tokenizer is refused); "cpu" is accepted as
    everywhere else in bioserc (`bioserc.runtime.ort_providers`)."""
    folder = tmp_path / "onnx-llm"
    shutil.copytree(plain_export[1], folder)
    write_manifest(str(folder), "onnx-llm", model_family="llama")
    with caplog.at_level(logging.WARNING, logger="bioserc.bios.ort_backend"):
        backend = OrtBackend(str(folder), provider="cpu")
    assert backend.providers == ["CPUExecutionProvider"] and "manifest" not in caplog.text
    with open(folder / "tokenizer.json", "a", encoding="utf-8") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match="'tokenizer.json' does not match its sha256"):
        OrtBackend(str(folder), provider="cpu")


def test_ort_backend_never_asks_for_tensorrt(plain_export):
    """A decoder's shapes change every step: the TensorRT EP would build an engine for each, so it is not offered."""
    with pytest.raises(ValueError, match="unknown execution provider 'tensorrt'; choose auto, cuda, cpu"):
        OrtBackend(str(plain_export[1]), provider="tensorrt")


def pipeline_options(kind: str, *flags: str) -> dict[str, Any]:
    """What `bioserc bios` hands `make_backend` (`bioserc label --bio-*` goes through the same `backend_options`)."""
    from bioserc.pipelines.bios_pipeline import make_parser
    from bioserc.pipelines.options import backend_options

    return backend_options(
        make_parser().parse_args(["calls.jsonl", "-o", "out", "--backend", kind, "--batch-size", "3", *flags])
    )


TRANSCRIPT = "Conversation transcript: " + " ".join(TEXTS[:3] * 3)


@pytest.mark.parametrize("kind", ["transformers", "onnx"])
def test_shared_prefix_gives_the_same_bios_from_fewer_prefilled_tokens(kind, plain_export, one_thread):
    """Three speakers of one call share the system message and transcript; a second call shares only the system
    message. Prefilling each shared prefix once and branching its KV cache must not change a single token."""
    hf_dir, onnx_dir = plain_export
    prompts = [
        user(TRANSCRIPT + f" Describe {name}.") + [{"role": "assistant", "content": f"{name} is"}]
        for name in ("Ann", "Bob", "Carol")
    ]
    prompts += [
        user("Conversation transcript: hello there. Describe Dan.") + [{"role": "assistant", "content": "Dan is"}]
    ]
    backend = make_backend(kind, str(hf_dir if kind == "transformers" else onnx_dir), batch_size=4)
    out = {}
    for share in (False, True):
        backend.share_prefix, backend.counts = share, Counter()
        out[share] = (
            [(g.text, g.prompt_tokens, g.new_tokens, g.finish_reason) for g in backend.generate(prompts, GREEDY)],
            dict(backend.counts),
        )
    assert out[True][0] == out[False][0] and any(text for text, *_ in out[True][0])
    plain, shared = out[False][1], out[True][1]
    assert plain["prompt_tokens"] == shared["prompt_tokens"] == plain["prefilled_tokens"]
    assert shared["prefilled_tokens"] < plain["prefilled_tokens"] / 2  # the transcript once instead of three times
    assert shared["generated_tokens"] == plain["generated_tokens"]


def test_ort_scores_profile_matches_pytorch_and_has_no_latent(plain_export, one_thread):
    """The scores profile reads logits, which an ONNX export returns (through the same shared-prefix prefill); the
    latent profile needs hidden states, which it does not: refused when the extractor is built."""
    from test_profiles import CALLS, LABELS

    from bioserc.bios.extract import BioExtractor

    hf_dir, onnx_dir = plain_export
    vectors = {}
    for kind, model, share in (("transformers", hf_dir, True), ("onnx", onnx_dir, True), ("onnx", onnx_dir, False)):
        backend = make_backend(kind, str(model), batch_size=4, share_prefix=share)
        extractor = BioExtractor(backend, profile="scores", labels=LABELS)
        vectors[kind, share] = {(r.conversation_id, r.speaker): r.vector for r in extractor.run(CALLS)}
    expected = vectors["transformers", True]
    assert len(expected) == 5 and not any(v is None for v in expected.values())
    for got in (vectors["onnx", True], vectors["onnx", False]):
        assert got.keys() == expected.keys()
        assert all(got[pair] == pytest.approx(vector, abs=1e-5) for pair, vector in expected.items())
    with pytest.raises(ValueError, match="profile latent needs the transformers backend: the onnx backend"):
        BioExtractor(make_backend("onnx", str(onnx_dir)), profile="latent")


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_backend_kind_takes_the_pipelines_options(kind, plain_export, monkeypatch, one_thread):
    """Each kind either builds from exactly what the pipelines pass, or fails with a message that says what to do;
    tensorrt-llm cannot be installed here, so its kind must reach that message (not a TypeError on an option)."""
    hf_dir, onnx_dir = (str(p) for p in plain_export)
    options = pipeline_options(kind, *(["--base-url", "http://127.0.0.1:9"] if kind == "openai" else []))
    if kind == "trtllm":
        monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # makes `import tensorrt_llm` raise ImportError
        with pytest.raises(ImportError, match=r"needs tensorrt_llm.*Python 3\.12 NVIDIA container.*trtllm-serve"):
            make_backend(kind, hf_dir, **options)
        return
    model = {"transformers": hf_dir, "onnx": onnx_dir, "openai": "served-name"}[kind]
    backend = make_backend(kind, model, **options)
    assert backend.name == kind
    if kind == "openai":
        assert isinstance(backend, OpenAICompatibleBackend) and backend.model_id == "openai:served-name"
        assert backend.identity()["base_url"] == "http://127.0.0.1:9"
    else:  # the bio cache keys on the folder's content
        assert backend.batch_size == 3 and backend.identity() == {"backend": kind, "content": model_fingerprint(model)}


BIOS_MODULES = sorted(m.name for m in pkgutil.iter_modules(bioserc.bios.__path__))


@pytest.mark.parametrize("module", BIOS_MODULES)
def test_each_bios_module_imports_alone_without_the_factory(module):
    """No import loop through the backend factory: only its callers (CLI, pipelines) import `backends`."""
    code = (
        f"import sys, bioserc.bios.{module}; "
        f"sys.exit(3 if {module!r} != 'backends' and 'bioserc.bios.backends' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr or f"bioserc.bios.{module} imports the factory bioserc.bios.backends"


def test_bios_pipeline_runs_on_each_local_backend_kind(plain_export, tmp_path, monkeypatch, one_thread):
    """`bioserc bios` end to end on transformers and ONNX Runtime (the same tiny Llama, so the same bios), and on
    trtllm, which cannot run here: the run fails with the message saying where it runs, nothing half-written."""
    from bioserc.jsonio import write_jsonl
    from bioserc.pipelines import bios_pipeline
    from bioserc.schema import Conversation, Utterance

    calls = [
        Conversation(
            f"c{n}",
            [
                Utterance(i, spk, text)
                for i, (spk, text) in enumerate([("Ann", TEXTS[n]), ("Bob", TEXTS[n + 1]), ("Ann", TEXTS[n + 2])])
            ],
        )
        for n in range(3)
    ]
    src = tmp_path / "calls.jsonl"
    write_jsonl(str(src), [c.to_dict() for c in calls])
    hf_dir, onnx_dir = plain_export
    bios = {}
    for kind, model in (("transformers", hf_dir), ("onnx", onnx_dir)):
        result = bios_pipeline.run(
            [
                str(src),
                "-o",
                str(tmp_path / kind),
                "--backend",
                kind,
                "--model",
                str(model),
                "--max-new-tokens",
                "8",
                "--batch-size",
                "4",
                "--allow-skips",
            ]
        )
        rows = list(read_jsonl(str(tmp_path / kind / "bios.jsonl")))
        dead = list(read_jsonl(str(tmp_path / kind / "dead_letter.jsonl")))
        assert len(rows) + len(dead) == 6 and result.counters["conversations_read"] == 3
        # a random model's text is mostly dead-lettered as too short: compare every generated text, kept or not
        bios[kind] = sorted((r["conversation_id"], r["speaker"], r["bio"]) for r in rows + dead)
    assert len(bios["transformers"]) == 6 and bios["transformers"] == bios["onnx"]
    assert all(bio.startswith(f"{speaker} is") and len(bio) > len(speaker) + 3 for _, speaker, bio in bios["onnx"])
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(ImportError, match=r"Python 3\.12 NVIDIA container"):
        bios_pipeline.run([str(src), "-o", str(tmp_path / "trt"), "--backend", "trtllm", "--model", str(hf_dir)])
    assert not (tmp_path / "trt" / "bios.jsonl").exists()
