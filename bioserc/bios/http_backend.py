"""A backend for any OpenAI-compatible server (vLLM, SGLang, `trtllm-serve`): the GPU lives elsewhere, bioserc only
sends HTTP.

Standard library only, so the client runs in the slimmest install. Requests go out in parallel (a thread pool of
`concurrency`), since servers batch concurrent requests themselves; overloaded or restarting servers (connection
errors, timeouts, 429, 5xx) are retried with exponential backoff and jitter, honouring Retry-After; other 4xx are
not retried. Each prompt succeeds or fails on its own: a refused prompt comes back as that prompt's
`Generation.error`, never as an error for its batch.

Only standard OpenAI fields are sent (model, max_tokens, temperature, top_p, seed). Server extensions such as vLLM's
`repetition_penalty` go in `extra_body`, merged into every request as is: the local backends' repetition penalty
(1.1) is not sent otherwise, and `no_repeat_ngram_size` has no server equivalent, so served bios differ from local.

Bio prompts end with a pre-filled assistant turn that the model must continue. On the chat endpoint that needs the
`continue_final_message` extension (vLLM, SGLang); `trtllm-serve` rejects unknown fields, so for it pass
`tokenizer_path` and `endpoint="completions"`: the prompt is then rendered here with the model's chat template,
exactly as the local backends render it, and sent as plain text to /v1/completions. Servers (MODEL_DIR: the merged
HF folder; `model` is the served name, as GET /v1/models lists it):

    vllm serve MODEL_DIR --served-model-name smollm2 --port 8000                               (endpoint "chat")
    python -m sglang.launch_server --model-path MODEL_DIR --served-model-name smollm2 --port 30000   (endpoint "chat")
    trtllm-serve MODEL_DIR --host 0.0.0.0 --port 8000          (endpoint "completions", tokenizer_path MODEL_DIR)
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

from bioserc.bios.base import Generation, GenerationConfig, LLMBackend, Messages
from bioserc.bios.cache import model_fingerprint
from bioserc.bios.chat import render_chat


RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BODY_EXCERPT = 500  # characters of an error response kept in the exception message
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0  # a server asking for longer is not waited for indefinitely
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class BackendRequestError(RuntimeError):
    """The server refused a request (or kept failing after every retry)."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        self.status, self.body = status, body
        super().__init__(message)


class OpenAICompatibleBackend(LLMBackend):
    """Args:
    base_url: server root, e.g. http://localhost:8000 (a trailing /v1 is accepted too).
    model: the model name the server serves (as listed by GET /v1/models).
    api_key: bearer token. Without it the key is read from the environment variable `api_key_env` names
        (default OPENAI_API_KEY); none is sent when that is unset (vLLM's default), unless `api_key_env` was
        named explicitly, which then must be set.
    concurrency: requests in flight at once.
    max_retries: retries after the first attempt, for connection errors, timeouts, 429 and 5xx only.
    timeout_s: per-request limit on connecting and on waiting for the (non-streamed) response.
    tokenizer_path: a local HF tokenizer folder for exact `count_tokens`; without it counts are approximate.
    max_context: the served model's context length (the server does not report it).
    endpoint: "chat" (/v1/chat/completions) or "completions" (/v1/completions, needs `tokenizer_path`: the
        prompt is rendered here with the model's chat template, for servers without vLLM's chat prefill).
    backoff_s: first retry delay; doubled each retry, capped at 30 s, with random jitter.
    extra_body: fields merged into every request body, for server extensions such as
        {"repetition_penalty": 1.1} (vLLM, SGLang); part of the bio cache key.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 32,
        max_retries: int = 5,
        timeout_s: float = 300,
        tokenizer_path: str | None = None,
        max_context: int = 8192,
        endpoint: str = "chat",
        backoff_s: float = 0.5,
        extra_body: dict[str, Any] | None = None,
    ):
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r}")
        if endpoint == "completions" and tokenizer_path is None:
            raise ValueError(
                "endpoint 'completions' renders prompts here with the model's chat template and needs "
                "tokenizer_path (the model's local folder)"
            )
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError(
                f"need concurrency >= 1, max_retries >= 0 and timeout_s > 0; got {concurrency}, "
                f"{max_retries}, {timeout_s}"
            )
        if api_key is None:
            api_key = os.environ.get(api_key_env or "OPENAI_API_KEY")
            if api_key is None and api_key_env:
                raise ValueError(f"api_key_env names ${api_key_env}, which is not set")
        root = base_url.rstrip("/")
        self.base_url = root[:-3] if root.endswith("/v1") else root
        self.model, self.api_key = model, api_key
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, timeout_s
        self.endpoint, self.backoff_s = endpoint, backoff_s
        self.extra_body = dict(extra_body or {})
        self.model_id = f"openai:{model}"
        self.max_context = max_context
        self.tokenizer: Any = None
        if tokenizer_path is not None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.tokenizer_path = tokenizer_path

    def identity(self) -> dict[str, Any]:
        """The server and served name, plus what changes the text it returns: endpoint, extensions, and on the
        completions endpoint the chat template that renders prompts here (its folder's content)."""
        template = None
        if self.endpoint == "completions" and self.tokenizer_path is not None:
            path = self.tokenizer_path
            template = model_fingerprint(path) if os.path.isdir(path) else path
        return {
            "backend": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "endpoint": self.endpoint,
            "extra_body": self.extra_body,
            "template": template,
        }

    def count_tokens(self, messages: Messages) -> int:
        """Exact with `tokenizer_path`; otherwise ceil(characters / 4) + 8 per message (template overhead).

        The approximation is deliberately rough: about right for English with BPE vocabularies, and the per-message
        term covers role markers. Pass `tokenizer_path` when conversations come close to `max_context`.
        """
        if self.tokenizer is not None:
            return len(self.tokenizer(render_chat(self.tokenizer, messages), add_special_tokens=False)["input_ids"])
        return sum(math.ceil(len(m["content"]) / 4) + 8 for m in messages)

    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        """Up to `concurrency` requests in flight; a prompt the server refuses (or that fails every retry) becomes
        that prompt's `error`, the rest of the batch is unaffected."""
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="bioserc-http") as pool:
            futures = [pool.submit(self._generate_isolated, messages, config) for messages in batch]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()  # a bug or an interrupt, not a server answer: stop sending the rest
                raise

    def _generate_isolated(self, messages: Messages, config: GenerationConfig) -> Generation:
        try:
            return self._generate_one(messages, config)
        except BackendRequestError as err:
            return Generation(text="", prompt_tokens=0, new_tokens=0, error=str(err))

    def request_body(self, messages: Messages, config: GenerationConfig) -> dict[str, Any]:
        """The JSON sent for one prompt. Greedy is temperature 0; the seed is always sent (servers may ignore it).

        `config.repetition_penalty` and `no_repeat_ngram_size` are not OpenAI fields and are not sent; ask for a
        server's own extension through `extra_body`.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature if config.do_sample else 0.0,
            "top_p": config.top_p if config.do_sample else 1.0,
            "seed": config.seed,
        }
        if self.endpoint == "completions":
            body["prompt"] = render_chat(self.tokenizer, messages)
            body["add_special_tokens"] = False  # the chat template already wrote any BOS
        else:
            body["messages"] = messages
            if messages and messages[-1]["role"] == "assistant":
                body["continue_final_message"] = True  # vLLM: extend the pre-filled answer instead of closing it
                body["add_generation_prompt"] = False
        return {**body, **self.extra_body}

    def _generate_one(self, messages: Messages, config: GenerationConfig) -> Generation:
        path = ENDPOINTS[self.endpoint]
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
                    raise BackendRequestError(
                        f"{url} returned HTTP {err.code} {err.reason}: {text}", err.code, text
                    ) from err
                last = f"HTTP {err.code} {err.reason}: {text}"
                retry_after = _retry_after_s(err.headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as err:  # URLError, connection errors and timeouts
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.max_retries:
                time.sleep(retry_after if retry_after is not None else self._backoff(attempt))
        raise BackendRequestError(f"{url} failed after {self.max_retries + 1} attempts; last error: {last}")

    def _backoff(self, attempt: int) -> float:
        """Exponential delay, randomly shortened by up to half so parallel workers do not retry in lockstep."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


def _read_body(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode("utf-8", "replace")[:BODY_EXCERPT]
    except OSError:
        return ""


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delay-seconds or an HTTP date), at most MAX_RETRY_AFTER_S; None when absent or
    unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))
