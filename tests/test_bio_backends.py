"""LLM backends other than transformers: the OpenAI-compatible HTTP client (against a fake loopback server), the
ONNX Runtime backend (error paths, and a greedy round trip on a tiny random Llama), the tensorrt-llm guard and the
backend registry."""

from __future__ import annotations

import json
import logging
import pkgutil
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tiny_llm import tiny_llama, tiny_tokenizer

import bioserc.bios
from bioserc.artifacts import ArtifactError, write_manifest
from bioserc.bios.backend import GenerationConfig
from bioserc.bios.backends import make_backend
from bioserc.bios.chat import render_chat
from bioserc.bios.http_backend import BackendRequestError, OpenAICompatibleBackend
from bioserc.bios.ort_backend import OrtBackend
from bioserc.bios.trtllm_backend import TrtLlmBackend


GREEDY = GenerationConfig(max_new_tokens=12, seed=1234)

# (status, headers, JSON-able body) for one request; the responder gets the 1-based attempt number and the request
Reply = tuple[int, dict[str, str], Any]


def completion(text: str, prompt_tokens: int = 7, new_tokens: int = 3, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "tiny",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                  "total_tokens": prompt_tokens + new_tokens},
    }


def echo(attempt: int, request: dict[str, Any]) -> Reply:
    return 200, {}, completion("re: " + request["body"]["messages"][-1]["content"])


class FakeOpenAI:
    """A loopback chat-completions server that records every request and the peak number served at once."""

    def __init__(self, responder: Callable[[int, dict[str, Any]], Reply], delay: Callable[[dict], float] | None):
        self.responder, self.delay = responder, delay
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                with fake.lock:
                    fake.requests.append(request)
                    attempt = len(fake.requests)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if fake.delay:
                        time.sleep(fake.delay(body))
                    status, headers, payload = fake.responder(attempt, request)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeOpenAI]]:
    servers: list[FakeOpenAI] = []

    def start(responder=echo, delay=None) -> FakeOpenAI:
        servers.append(FakeOpenAI(responder, delay))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Describe people."}, {"role": "user", "content": text}]


def test_http_batch_comes_back_in_input_order(serve):
    # later prompts answer sooner, so completion order is the reverse of input order
    server = serve(delay=lambda body: 0.02 * (5 - int(body["messages"][-1]["content"][-1])))
    backend = OpenAICompatibleBackend(server.url, "tiny", concurrency=2)
    gens = backend.generate([user(f"prompt {i}") for i in range(5)], GREEDY)
    assert [g.text for g in gens] == [f"re: prompt {i}" for i in range(5)]
    assert all(g.prompt_tokens == 7 and g.new_tokens == 3 and g.finish_reason == "stop" for g in gens)
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert backend.model_id == "openai:tiny"


def test_http_concurrency_limit_is_respected(serve):
    server = serve(delay=lambda body: 0.05)
    backend = OpenAICompatibleBackend(server.url + "/v1/", "tiny", concurrency=3)  # a trailing /v1 is accepted
    assert len(backend.generate([user(str(i)) for i in range(9)], GREEDY)) == 9
    assert len(server.requests) == 9
    assert 2 <= server.max_in_flight <= 3


def test_http_retries_5xx_then_succeeds(serve):
    server = serve(lambda attempt, req: (503, {}, {"error": "loading"}) if attempt <= 2 else echo(attempt, req))
    backend = OpenAICompatibleBackend(server.url, "tiny", max_retries=5, backoff_s=0.01)
    [gen] = backend.generate([user("hi")], GREEDY)
    assert gen.text == "re: hi"
    assert len(server.requests) == 3


def test_http_429_honours_retry_after(serve):
    server = serve(lambda attempt, req: (429, {"Retry-After": "0"}, {"error": "slow down"}) if attempt == 1
                   else echo(attempt, req))
    backend = OpenAICompatibleBackend(server.url, "tiny", backoff_s=10)  # exponential backoff would sleep >= 5 s
    start = time.monotonic()
    [gen] = backend.generate([user("hi")], GREEDY)
    assert gen.text == "re: hi"
    assert len(server.requests) == 2
    assert time.monotonic() - start < 2


def test_http_4xx_fails_at_once_with_status_and_body(serve):
    server = serve(lambda attempt, req: (400, {}, {"error": {"message": "unknown field continue_final_message"}}))
    backend = OpenAICompatibleBackend(server.url, "tiny", backoff_s=0.01)
    with pytest.raises(BackendRequestError, match="HTTP 400.*unknown field continue_final_message") as info:
        backend.generate([user("hi")], GREEDY)
    assert info.value.status == 400
    assert len(server.requests) == 1


def test_http_gives_up_after_max_retries_on_connection_errors():
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}", "tiny", max_retries=2, backoff_s=0.01)
    with pytest.raises(BackendRequestError, match="failed after 3 attempts"):
        backend.generate([user("hi")], GREEDY)


def test_http_request_body_greedy_seed_prefill_and_auth(serve, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    server = serve()
    backend = OpenAICompatibleBackend(server.url, "tiny")
    prefilled = user("describe Ann") + [{"role": "assistant", "content": "Ann "}]
    backend.generate([prefilled], GREEDY)
    request = server.requests[0]
    body = request["body"]
    assert body["temperature"] == 0 and body["top_p"] == 1.0 and body["seed"] == 1234
    assert body["max_tokens"] == 12 and body["model"] == "tiny" and body["messages"] == prefilled
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert request["headers"]["Authorization"] == "Bearer sk-test"

    sampled = GenerationConfig(max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9, seed=7)
    backend.generate([user("plain")], sampled)
    body = server.requests[1]["body"]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 7)
    assert "continue_final_message" not in body


def test_http_approximate_token_count():
    backend = OpenAICompatibleBackend("http://127.0.0.1:9", "tiny")
    assert backend.count_tokens([{"role": "user", "content": "x" * 9}, {"role": "assistant", "content": ""}]) == 19


def test_trtllm_without_tensorrt_llm_explains_where_it_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # makes `import tensorrt_llm` raise ImportError
    with pytest.raises(ImportError, match=r"Python 3\.12.*container"):
        TrtLlmBackend("/nonexistent/model")


def test_make_backend_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds: transformers, onnx, openai, trtllm"):
        make_backend("llamacpp", "smollm2")


def test_make_backend_builds_openai_without_resolving(serve):
    server = serve()
    backend = make_backend("openai", "served-name", base_url=server.url, concurrency=1)
    assert isinstance(backend, OpenAICompatibleBackend) and backend.model_id == "openai:served-name"


def test_ort_backend_needs_an_exported_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no .onnx model.*optimum-cli export onnx"):
        OrtBackend(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        OrtBackend(str(tmp_path / "missing"))


def test_http_completions_endpoint_renders_the_prompt_locally(serve, tmp_path):
    """The trtllm-serve path: no chat extensions, the chat template applied here, exact token counts."""
    tokenizer = tiny_tokenizer(tmp_path)
    server = serve(lambda attempt, req: (200, {}, {
        "choices": [{"index": 0, "text": " cheerful", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12}}))
    backend = OpenAICompatibleBackend(server.url, "tiny", tokenizer_path=str(tmp_path), endpoint="completions")
    prefilled = user("describe Ann") + [{"role": "assistant", "content": "Ann:"}]
    [gen] = backend.generate([prefilled], GREEDY)
    assert (gen.text, gen.prompt_tokens, gen.new_tokens, gen.finish_reason) == (" cheerful", 30, 12, "length")
    request = server.requests[0]
    assert request["path"] == "/v1/completions"
    assert request["body"]["prompt"] == render_chat(tokenizer, prefilled)
    assert request["body"]["prompt"].endswith("<|assistant|>Ann:")
    assert request["body"]["add_special_tokens"] is False and "messages" not in request["body"]
    rendered = tokenizer(render_chat(tokenizer, prefilled), add_special_tokens=False)["input_ids"]
    assert backend.count_tokens(prefilled) == len(rendered)


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
    prompts = [user("Ann is cheerful.") + [{"role": "assistant", "content": "Ann "}],
               user("Conversation transcript: Bob sounds tired, answers briefly. Describe Bob's mood.")]

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    expected = []
    for messages in prompts:  # one prompt at a time: no padding on the reference side
        ids = tokenizer(render_chat(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, repetition_penalty=GREEDY.repetition_penalty,
                                 no_repeat_ngram_size=GREEDY.no_repeat_ngram_size)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        n = next((k for k, t in enumerate(new) if t in (tokenizer.eos_token_id, tokenizer.pad_token_id)), len(new))
        expected.append((tokenizer.decode(new[:n], skip_special_tokens=True), ids["input_ids"].shape[1], n))

    with caplog.at_level(logging.WARNING, logger="bioserc.bios.ort_backend"):
        backend = OrtBackend(str(onnx_dir), provider="CPUExecutionProvider", batch_size=2)
    assert "no manifest.json" in caplog.text  # loads, but says its files could not be verified
    gens = backend.generate(prompts, GREEDY)
    assert [(g.text, g.prompt_tokens, g.new_tokens) for g in gens] == expected
    assert any(g.text for g in gens)
    assert backend.count_tokens(prompts[0]) == expected[0][1]
    assert backend.model_id == "onnx:onnx" and backend.max_context == 256


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


BIOS_MODULES = sorted(m.name for m in pkgutil.iter_modules(bioserc.bios.__path__))


@pytest.mark.parametrize("module", BIOS_MODULES)
def test_each_bios_module_imports_alone_without_the_factory(module):
    """No import loop through the backend factory: only its callers (CLI, pipelines) import `backends`."""
    code = (f"import sys, bioserc.bios.{module}; "
            f"sys.exit(3 if {module!r} != 'backends' and 'bioserc.bios.backends' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr or f"bioserc.bios.{module} imports the factory bioserc.bios.backends"
