"""A backend for any OpenAI-compatible server (vLLM, `trtllm-serve`): the GPU lives elsewhere, bioserc only sends HTTP.

Standard library only, so the client runs in the slimmest install. Requests go out in parallel (a thread pool of
`concurrency`), since servers batch concurrent requests themselves; overloaded or restarting servers (connection
errors, 429, 5xx) are retried with exponential backoff and jitter, honouring Retry-After.

Bio prompts end with a pre-filled assistant turn that the model must continue. On the chat endpoint that needs
vLLM's `continue_final_message` extension; `trtllm-serve` rejects unknown fields, so for it pass `tokenizer_path`
and `endpoint="completions"`: the prompt is then rendered here with the model's chat template, exactly as the
local backends render it, and sent as plain text to /v1/completions.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bioserc.bios.backend import Generation, GenerationConfig, LLMBackend, Messages
from bioserc.bios.chat import render_chat


RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BODY_EXCERPT = 500  # characters of an error response kept in the exception message
MAX_BACKOFF_S = 30.0


class BackendRequestError(RuntimeError):
    """The server refused a request (or kept failing after every retry)."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        self.status, self.body = status, body
        super().__init__(message)


class OpenAICompatibleBackend(LLMBackend):
    """Args:
        base_url: server root, e.g. http://localhost:8000 (a trailing /v1 is accepted too).
        model: the model name the server serves (as listed by GET /v1/models).
        api_key: bearer token; falls back to $OPENAI_API_KEY; none is sent when neither is set (vLLM's default).
        concurrency: requests in flight at once.
        max_retries: retries after the first attempt, for connection errors, 429 and 5xx only.
        timeout_s: per-request socket timeout.
        tokenizer_path: a local HF tokenizer folder for exact `count_tokens`; without it counts are approximate.
        max_context: the served model's context length (the server does not report it).
        endpoint: "chat" (/v1/chat/completions) or "completions" (/v1/completions, needs `tokenizer_path`).
        backoff_s: first retry delay; doubled each retry, capped at 30 s, with random jitter.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout_s: float = 120, tokenizer_path: str | None = None,
                 max_context: int = 8192, endpoint: str = "chat", backoff_s: float = 0.5):
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', not {endpoint!r}")
        if endpoint == "completions" and tokenizer_path is None:
            raise ValueError("endpoint='completions' renders prompts locally and needs tokenizer_path")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        root = base_url.rstrip("/")
        self.base_url = root[:-3] if root.endswith("/v1") else root
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, timeout_s
        self.endpoint, self.backoff_s = endpoint, backoff_s
        self.model_id = f"openai:{model}"
        self.max_context = max_context
        self.tokenizer: Any = None
        if tokenizer_path is not None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def count_tokens(self, messages: Messages) -> int:
        """Exact with `tokenizer_path`; otherwise ceil(characters / 4) + 8 per message (template overhead).

        The approximation is deliberately rough: about right for English with BPE vocabularies, and the per-message
        term covers role markers. Pass `tokenizer_path` when conversations come close to `max_context`.
        """
        if self.tokenizer is not None:
            return len(self.tokenizer(render_chat(self.tokenizer, messages), add_special_tokens=False)["input_ids"])
        return sum(math.ceil(len(m["content"]) / 4) + 8 for m in messages)

    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="bioserc-http") as pool:
            futures = [pool.submit(self._generate_one, messages, config) for messages in batch]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()  # one hard failure fails the batch; do not keep sending the rest
                raise

    def request_body(self, messages: Messages, config: GenerationConfig) -> dict[str, Any]:
        """The JSON sent for one prompt. Greedy is temperature 0; the seed is always sent (servers may ignore it)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature if config.do_sample else 0.0,
            "top_p": config.top_p if config.do_sample else 1.0,
            "seed": config.seed,
        }
        if config.repetition_penalty != 1.0:  # vLLM/trtllm-serve extension; plain OpenAI rejects it
            body["repetition_penalty"] = config.repetition_penalty
        if self.endpoint == "completions":
            body["prompt"] = render_chat(self.tokenizer, messages)
            body["add_special_tokens"] = False  # the chat template already wrote any BOS
        else:
            body["messages"] = messages
            if messages and messages[-1]["role"] == "assistant":
                body["continue_final_message"] = True  # vLLM: extend the pre-filled answer instead of closing it
                body["add_generation_prompt"] = False
        return body

    def _generate_one(self, messages: Messages, config: GenerationConfig) -> Generation:
        path = "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"
        reply = self._post(path, self.request_body(messages, config))
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            excerpt = json.dumps(reply)[:BODY_EXCERPT]
            raise BackendRequestError(f"unexpected response from {self.base_url}{path}: {excerpt}") from err
        return Generation(
            text=text or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            new_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
                try:
                    return json.loads(payload)
                except json.JSONDecodeError as err:
                    raise BackendRequestError(f"{url} returned invalid JSON: {payload[:BODY_EXCERPT]!r}") from err
            except urllib.error.HTTPError as err:
                text = _read_body(err)
                if err.code not in RETRY_STATUSES:
                    raise BackendRequestError(f"{url} returned HTTP {err.code} {err.reason}: {text}",
                                              err.code, text) from err
                last = f"HTTP {err.code} {err.reason}: {text}"
                retry_after = _retry_after_s(err.headers.get("Retry-After"))
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.max_retries:
                time.sleep(retry_after if retry_after is not None else self._backoff(attempt))
        raise BackendRequestError(f"{url} failed after {self.max_retries + 1} attempts; last error: {last}")

    def _backoff(self, attempt: int) -> float:
        """Exponential delay, randomly shortened by up to half so parallel workers do not retry in lockstep."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)


def _read_body(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode("utf-8", "replace")[:BODY_EXCERPT]
    except OSError:
        return ""


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (either delay-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
