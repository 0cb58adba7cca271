"""The OpenAI-compatible HTTP backend (the route to vLLM, SGLang and trtllm-serve) against a fake server on loopback:
order, concurrency, retries with backoff and Retry-After, timeouts, per-request failures (one refused prompt fails
alone, nothing is lost), the request body and key, the completions endpoint, cache identity, and a `bioserc bios`
run through it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tiny_llm import tiny_tokenizer

from bioserc.bios.base import GenerationConfig
from bioserc.bios.chat import render_chat
from bioserc.bios.extract import BioExtractor
from bioserc.bios.http_backend import OpenAICompatibleBackend
from bioserc.jsonio import read_jsonl
from bioserc.schema import Conversation, Utterance


GREEDY = GenerationConfig(max_new_tokens=12, seed=1234)
MAX_REQUESTS = 200  # a client stuck in a retry loop gets a 4xx (never retried) instead of running forever

# (status, headers, JSON-able body) for one request; the responder gets the 1-based request number and the request
Reply = tuple[int, dict[str, str], Any]


def completion(text: str, prompt_tokens: int = 7, new_tokens: int = 3, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "tiny",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": new_tokens,
            "total_tokens": prompt_tokens + new_tokens,
        },
    }


def echo(attempt: int, request: dict[str, Any]) -> Reply:
    return 200, {}, completion("re: " + request["body"]["messages"][-1]["content"])


def last_message(request: dict[str, Any]) -> str:
    return request["body"]["messages"][-1]["content"]


class FakeOpenAI:
    """A loopback chat-completions server that records every request and the peak number served at once.

    `release` ends every wait a responder is blocked in (the fixture sets it before stopping the server).
    """

    def __init__(self, responder: Callable[[int, dict[str, Any]], Reply], delay: Callable[[dict], float] | None):
        self.responder, self.delay = responder, delay
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
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
                    if attempt > MAX_REQUESTS:
                        status, headers, payload = 418, {}, {"error": "request limit of this test reached"}
                    else:
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

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (timeout) closed the socket this handler writes to

        self.server = Server(("127.0.0.1", 0), Handler)  # port 0: a free port chosen by the OS
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def hang(self, seconds: float = 10) -> None:
        """Block a responder until the test ends (at most `seconds`)."""
        self.release.wait(seconds)

    def close(self) -> None:
        self.release.set()
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


def test_batch_comes_back_in_input_order(serve):
    # later prompts answer sooner, so completion order is the reverse of input order
    server = serve(delay=lambda body: 0.02 * (5 - int(body["messages"][-1]["content"][-1])))
    backend = OpenAICompatibleBackend(server.url, "tiny", concurrency=2)
    gens = backend.generate([user(f"prompt {i}") for i in range(5)], GREEDY)
    assert [g.text for g in gens] == [f"re: prompt {i}" for i in range(5)]
    assert all(g.prompt_tokens == 7 and g.new_tokens == 3 and g.finish_reason == "stop" for g in gens)
    assert all(g.error is None for g in gens)
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert backend.model_id == "openai:tiny"


def test_many_requests_in_flight_within_the_concurrency_limit(serve):
    server = serve(delay=lambda body: 0.05)
    backend = OpenAICompatibleBackend(server.url + "/v1/", "tiny", concurrency=3)  # a trailing /v1 is accepted
    assert len(backend.generate([user(str(i)) for i in range(9)], GREEDY)) == 9
    assert len(server.requests) == 9
    assert 2 <= server.max_in_flight <= 3


def test_a_500_is_retried_then_succeeds(serve):
    server = serve(lambda attempt, req: (500, {}, {"error": "boom"}) if attempt == 1 else echo(attempt, req))
    backend = OpenAICompatibleBackend(server.url, "tiny", max_retries=3, backoff_s=0.01)
    [gen] = backend.generate([user("hi")], GREEDY)
    assert (gen.text, gen.error) == ("re: hi", None)
    assert len(server.requests) == 2


def test_5xx_retried_until_the_server_is_up(serve):
    server = serve(lambda attempt, req: (503, {}, {"error": "loading"}) if attempt <= 2 else echo(attempt, req))
    backend = OpenAICompatibleBackend(server.url, "tiny", max_retries=5, backoff_s=0.01)
    [gen] = backend.generate([user("hi")], GREEDY)
    assert gen.text == "re: hi"
    assert len(server.requests) == 3


def test_429_honours_retry_after(serve):
    server = serve(
        lambda attempt, req: (
            (429, {"Retry-After": "0"}, {"error": "slow down"}) if attempt == 1 else echo(attempt, req)
        )
    )
    backend = OpenAICompatibleBackend(server.url, "tiny", backoff_s=10)  # exponential backoff would sleep >= 5 s
    start = time.monotonic()
    [gen] = backend.generate([user("hi")], GREEDY)
    assert gen.text == "re: hi"
    assert len(server.requests) == 2
    assert time.monotonic() - start < 2


def test_429_waits_as_long_as_retry_after_says(serve):
    server = serve(
        lambda attempt, req: (
            (429, {"Retry-After": "1"}, {"error": "slow down"}) if attempt == 1 else echo(attempt, req)
        )
    )
    backend = OpenAICompatibleBackend(server.url, "tiny", backoff_s=0.01)  # backoff alone would retry at once
    start = time.monotonic()
    [gen] = backend.generate([user("hi")], GREEDY)
    assert gen.text == "re: hi" and time.monotonic() - start >= 0.9


def test_a_refused_prompt_fails_alone_and_nothing_is_lost(serve):
    """A 400 for one prompt is that prompt's error (not retried); every other prompt of the batch succeeds."""
    server = serve(
        lambda attempt, req: (
            (400, {}, {"error": {"message": "prompt has a forbidden token"}})
            if last_message(req) == "bad"
            else echo(attempt, req)
        )
    )
    backend = OpenAICompatibleBackend(server.url, "tiny", concurrency=4, backoff_s=0.01)
    prompts = ["a", "b", "bad", "c", "d"]
    gens = backend.generate([user(p) for p in prompts], GREEDY)
    assert [g.text for g in gens] == ["re: a", "re: b", "", "re: c", "re: d"]
    assert [g.error is None for g in gens] == [True, True, False, True, True]
    assert "HTTP 400" in gens[2].error and "forbidden token" in gens[2].error
    assert sorted(last_message(r) for r in server.requests) == sorted(prompts)  # the 400 was not retried


def test_a_hanging_request_times_out_alone(serve):
    def responder(attempt: int, request: dict[str, Any]) -> Reply:
        if last_message(request) == "slow":
            server.hang()
        return echo(attempt, request)

    server = serve(responder)
    backend = OpenAICompatibleBackend(server.url, "tiny", timeout_s=0.3, max_retries=1, backoff_s=0.01)
    start = time.monotonic()
    gens = backend.generate([user("fast"), user("slow"), user("quick")], GREEDY)
    assert time.monotonic() - start < 5
    assert [g.text for g in gens] == ["re: fast", "", "re: quick"]
    assert gens[1].error is not None and "failed after 2 attempts" in gens[1].error
    assert "timed out" in gens[1].error
    assert [last_message(r) for r in server.requests].count("slow") == 2  # a timeout is retried


def test_connection_errors_give_up_after_max_retries():
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}", "tiny", max_retries=2, backoff_s=0.01)
    [gen] = backend.generate([user("hi")], GREEDY)
    assert gen.text == "" and "failed after 3 attempts" in gen.error


def test_request_body_sends_only_openai_fields_unless_asked(serve):
    server = serve()
    backend = OpenAICompatibleBackend(server.url, "tiny")
    prefilled = user("describe Ann") + [{"role": "assistant", "content": "Ann "}]
    backend.generate([prefilled], GREEDY)
    body = server.requests[0]["body"]
    assert body["temperature"] == 0 and body["top_p"] == 1.0 and body["seed"] == 1234
    assert body["max_tokens"] == 12 and body["model"] == "tiny" and body["messages"] == prefilled
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert GREEDY.repetition_penalty != 1.0 and "repetition_penalty" not in body
    assert "no_repeat_ngram_size" not in body

    sampled = GenerationConfig(max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9, seed=7)
    backend.generate([user("plain")], sampled)
    body = server.requests[1]["body"]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 7)
    assert "continue_final_message" not in body

    vllm = OpenAICompatibleBackend(server.url, "tiny", extra_body={"repetition_penalty": 1.1, "top_k": 20})
    vllm.generate([user("x")], GREEDY)
    body = server.requests[2]["body"]
    assert (body["repetition_penalty"], body["top_k"]) == (1.1, 20)


def test_api_key_header(serve, monkeypatch):
    server = serve()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAICompatibleBackend(server.url, "tiny").generate([user("none")], GREEDY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    OpenAICompatibleBackend(server.url, "tiny").generate([user("default env")], GREEDY)
    OpenAICompatibleBackend(server.url, "tiny", api_key="sk-given").generate([user("given")], GREEDY)
    monkeypatch.setenv("MY_SERVER_KEY", "sk-named")
    OpenAICompatibleBackend(server.url, "tiny", api_key_env="MY_SERVER_KEY").generate([user("named")], GREEDY)
    auth = {last_message(r): r["headers"].get("Authorization") for r in server.requests}
    assert auth == {
        "none": None,
        "default env": "Bearer sk-env",
        "given": "Bearer sk-given",
        "named": "Bearer sk-named",
    }
    with pytest.raises(ValueError, match=r"\$UNSET_KEY, which is not set"):
        OpenAICompatibleBackend(server.url, "tiny", api_key_env="UNSET_KEY")


def test_bad_options_are_refused_before_any_request():
    with pytest.raises(ValueError, match="endpoint must be one of chat, completions"):
        OpenAICompatibleBackend("http://127.0.0.1:9", "tiny", endpoint="responses")
    with pytest.raises(ValueError, match="needs tokenizer_path"):
        OpenAICompatibleBackend("http://127.0.0.1:9", "tiny", endpoint="completions")
    with pytest.raises(ValueError, match="concurrency >= 1"):
        OpenAICompatibleBackend("http://127.0.0.1:9", "tiny", concurrency=0)


def test_approximate_token_count():
    backend = OpenAICompatibleBackend("http://127.0.0.1:9", "tiny")
    assert backend.count_tokens([{"role": "user", "content": "x" * 9}, {"role": "assistant", "content": ""}]) == 19


def test_completions_endpoint_renders_the_prompt_locally(serve, tmp_path):
    """The trtllm-serve path: no chat extensions, the chat template applied here, exact token counts."""
    tokenizer = tiny_tokenizer(tmp_path)
    server = serve(
        lambda attempt, req: (
            200,
            {},
            {
                "choices": [{"index": 0, "text": " cheerful", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 12},
            },
        )
    )
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

    # the chat template renders the prompt here, so a changed template is a different cache identity
    before = backend.identity()
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    again = OpenAICompatibleBackend(server.url, "tiny", tokenizer_path=str(tmp_path), endpoint="completions")
    assert again.identity() != before


def test_cache_identity_is_server_served_name_and_request_options():
    def identity(**options: Any) -> dict[str, Any]:
        base = {"base_url": "http://gpu-a:8000", "model": "llama"}
        return OpenAICompatibleBackend(**{**base, **options}).identity()

    assert identity() == identity(base_url="http://gpu-a:8000/v1/", concurrency=4, timeout_s=5)
    assert (
        len(
            {
                json.dumps(identity(**o), sort_keys=True)
                for o in (
                    {},
                    {"base_url": "http://gpu-b:8000"},
                    {"model": "llama-retrained"},
                    {"extra_body": {"repetition_penalty": 1.1}},
                )
            }
        )
        == 4
    )


CALLS = [
    Conversation("c1", [Utterance(0, "ANN", "Hi, is the shop open?"), Utterance(1, "BOB", "Yes, until six.")]),
    Conversation("c2", [Utterance(0, "CARL", "My parcel is late."), Utterance(1, "DORA", "Let me check.")]),
]


def bio_server(serve) -> FakeOpenAI:
    """Writes a usable bio for every speaker but DORA, whose prompt the server refuses."""

    def responder(attempt: int, request: dict[str, Any]) -> Reply:
        if last_message(request) == "DORA is":
            return 400, {}, {"error": {"message": "this prompt is refused"}}
        return 200, {}, completion(" a calm, friendly speaker who answers briefly and clearly.")

    return serve(responder)


def test_extractor_dead_letters_only_the_refused_speaker(serve):
    server = bio_server(serve)
    backend = OpenAICompatibleBackend(server.url, "tiny", backoff_s=0.01)
    results = {r.speaker: r for r in BioExtractor(backend).run(CALLS)}
    assert sorted(results) == ["ANN", "BOB", "CARL", "DORA"]
    assert [s for s, r in results.items() if r.error] == ["DORA"]
    assert results["DORA"].error.startswith("request failed:") and "HTTP 400" in results["DORA"].error
    assert results["CARL"].bio == "CARL is a calm, friendly speaker who answers briefly and clearly."


def test_bios_pipeline_through_the_openai_backend(serve, tmp_path):
    """`bioserc bios --backend openai`: the neighbour of a refused prompt keeps its bio; only DORA is dead-lettered."""
    from bioserc.pipelines import bios_pipeline

    server = bio_server(serve)
    src = tmp_path / "calls.jsonl"
    src.write_text("".join(c.to_json() + "\n" for c in CALLS))
    out = tmp_path / "out"
    bios_pipeline.run(
        [
            str(src),
            "-o",
            str(out),
            "--backend",
            "openai",
            "--base-url",
            server.url,
            "--model",
            "tiny",
            "--cache",
            "none",
        ]
    )
    bios = sorted((r["conversation_id"], r["speaker"]) for r in read_jsonl(str(out / "bios.jsonl")))
    dead = [(r["record"], r["speaker"]) for r in read_jsonl(str(out / "dead_letter.jsonl"))]
    assert bios == [("c1", "ANN"), ("c1", "BOB"), ("c2", "CARL")]
    assert dead == [("c2", "DORA")]
    assert len(server.requests) == 4
