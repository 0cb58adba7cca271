"""Plan, generate and post-process speaker bios. Used by the local runner and by the Beam pipeline's model handler.

`plan` turns a conversation into cached results plus generation requests; `generate` runs a batch of requests on a
backend and returns one `BioResult` per (conversation, speaker), successful or with an error reason, never fewer.
The profile source (`bioserc.bios.profiles`) picks the prompt and whether a result is generated text (`bio`) or a
vector read from one prefill (`vector`, with `bio` empty).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bioserc.bios.base import GenerationConfig, LLMBackend
from bioserc.bios.cache import BioCache, bio_key
from bioserc.bios.postprocess import clean_bio, degenerate_reason
from bioserc.bios.profiles import (
    PROMPT_VERSIONS,
    VECTOR_PROFILES,
    check_profile,
    label_probabilities,
    label_token_ids,
    profile_prompt,
    rounded,
)
from bioserc.prompts.bio import BioPrompt, transcript_text
from bioserc.schema import Conversation


# Text bios' cache keys keep the "mode" entry they had while `--scope per-conversation` existed, with the value every
# bio had by default and has now: existing caches stay valid.
TEXT_KEY_SCOPE = "per-speaker"
# Error prefixes: the backend failed the whole batch, or refused one prompt (already retried by the backend).
GENERATION_FAILED, REQUEST_FAILED = "generation failed:", "request failed:"


@dataclass(slots=True)
class BioResult:
    conversation_id: str
    speaker: str
    bio: str
    model: str
    prompt_version: str
    truncated: bool = False
    prompt_tokens: int = 0
    new_tokens: int = 0
    cached: bool = False
    error: str | None = None  # set when no usable bio came out; the result then belongs in the dead-letter output
    profile: str = "text"  # the profile source (`bioserc.bios.profiles`)
    vector: list[float] | None = None  # scores/latent profiles; `bio` is then ""
    seconds: float = 0.0  # this result's share of its backend call's wall time (0 when cached)

    def to_dict(self) -> dict:
        """The bios.jsonl row; `vector` only for the vector profiles."""
        row = asdict(self)
        if self.vector is None:
            del row["vector"]
        return row


@dataclass(slots=True)
class BioRequest:
    """One speaker's prompt; `key` is its cache key."""

    conversation: Conversation
    speaker: str
    prompt: BioPrompt
    key: str


class BioExtractor:
    """Args:
    backend: the loaded LLM.
    config: decoding settings (greedy by default).
    words: word limit asked for in the prompt.
    cache: optional `BioCache`; cached bios are returned without generating.
    profile: the profile source, one of `bioserc.bios.profiles.PROFILES` ("text": the bio).
    labels: the label words the scores profile scores, in the order of its vectors; the latent profile lists them
        in its question when given.
    """

    def __init__(
        self,
        backend: LLMBackend,
        config: GenerationConfig | None = None,
        words: int = 60,
        cache: BioCache | None = None,
        profile: str = "text",
        labels: Sequence[str] | None = None,
    ):
        check_profile(profile, backend.name, backend.prefill_outputs(), labels)
        self.backend, self.config, self.words, self.cache = backend, config or GenerationConfig(), words, cache
        self.profile, self.labels, self.version = profile, list(labels) if labels else None, PROMPT_VERSIONS[profile]
        self.label_ids = label_token_ids(backend.encode, self.labels) if profile == "scores" else None
        vectors = profile in VECTOR_PROFILES  # a prefill only: the whole context holds the prompt
        self.budget = backend.max_context - (1 if vectors else self.config.max_new_tokens)
        self.identity = backend.identity()  # hashes a local model folder's files once, not once per bio

    def key(self, conv: Conversation, speaker: str) -> str:
        """The cache key; a text bio's is the same as before profiles existed, so existing caches stay valid."""
        if self.profile == "text":
            params = {**self.config.to_dict(), "mode": TEXT_KEY_SCOPE, "words": self.words}
        elif self.profile == "emotion":
            params = {**self.config.to_dict(), "profile": self.profile, "words": self.words}
        else:  # no decoding: generation settings do not matter, the label words do
            params = {"profile": self.profile, "labels": self.labels}
        return bio_key(transcript_text(conv), speaker, self.identity, self.version, params)

    def result(self, conv: Conversation, speaker: str, **fields) -> BioResult:
        return BioResult(
            conv.id,
            speaker,
            fields.pop("bio", ""),
            self.backend.model_id,
            self.version,
            profile=self.profile,
            **fields,
        )

    def plan(self, conv: Conversation) -> tuple[list[BioResult], list[BioRequest]]:
        done: list[BioResult] = []
        todo: dict[str, str] = {}
        for speaker in conv.speakers:
            key = self.key(conv, speaker)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit:
                done.append(
                    self.result(
                        conv,
                        speaker,
                        bio=hit["bio"],
                        truncated=hit.get("truncated", False),
                        vector=hit.get("vector"),
                        cached=True,
                    )
                )
            else:
                todo[speaker] = key
        if not todo:
            return done, []
        try:
            return done, [self.speaker_request(conv, s, k) for s, k in todo.items()]
        except ValueError as err:  # cannot fit even the two end turns into the context
            return done + [self.result(conv, s, error=str(err)) for s in todo], []

    def speaker_request(self, conv: Conversation, speaker: str, key: str) -> BioRequest:
        prompt = profile_prompt(
            self.profile, conv, speaker, self.words, self.labels, self.backend.count_tokens, self.budget
        )
        return BioRequest(conv, speaker, prompt, key)

    def generate(self, requests: list[BioRequest]) -> list[BioResult]:
        if not requests:
            return []
        if self.profile in VECTOR_PROFILES:
            return self.prefill(requests)
        start = time.perf_counter()
        try:
            gens = self.backend.generate([r.prompt.messages for r in requests], self.config)
        except Exception as err:  # noqa: BLE001 - a failed batch becomes dead-letter results, not a crashed run
            return self.failed(requests, err)
        seconds = round((time.perf_counter() - start) / len(requests), 4)
        results = []
        for req, gen in zip(requests, gens, strict=True):
            stats = {
                "truncated": req.prompt.truncated,
                "prompt_tokens": gen.prompt_tokens,
                "new_tokens": gen.new_tokens,
                "seconds": seconds,
            }
            if gen.error is not None:  # this prompt alone failed; the batch's other prompts stand
                results.append(
                    self.result(req.conversation, req.speaker, error=f"{REQUEST_FAILED} {gen.error}", **stats)
                )
                continue
            bio = clean_bio(req.prompt.answer_prefix + gen.text, gen.finish_reason == "length")
            results.append(self.finish(req, bio, stats))
        return results

    def failed(self, requests: list[BioRequest], err: Exception) -> list[BioResult]:
        return [
            self.result(r.conversation, r.speaker, error=f"{GENERATION_FAILED} {type(err).__name__}: {err}")
            for r in requests
        ]

    def prefill(self, requests: list[BioRequest]) -> list[BioResult]:
        """The vector profiles: one prefill per request (shared transcripts once, by the backend), no decoding."""
        start = time.perf_counter()
        try:
            states = self.backend.prefill_last([r.prompt.messages for r in requests], hidden=self.profile == "latent")
        except Exception as err:  # noqa: BLE001 - as in `generate`
            return self.failed(requests, err)
        seconds = round((time.perf_counter() - start) / len(requests), 4)
        results = []
        for req, state in zip(requests, states, strict=True):
            vector = rounded(
                label_probabilities(state.logits, self.label_ids) if self.label_ids is not None else state.hidden
            )
            if self.cache is not None:
                self.cache.put(
                    req.key,
                    {
                        "conversation_id": req.conversation.id,
                        "speaker": req.speaker,
                        "bio": "",
                        "vector": vector,
                        "truncated": req.prompt.truncated,
                    },
                )
            results.append(
                self.result(
                    req.conversation,
                    req.speaker,
                    vector=vector,
                    truncated=req.prompt.truncated,
                    prompt_tokens=state.prompt_tokens,
                    seconds=seconds,
                )
            )
        return results

    def finish(self, req: BioRequest, bio: str, stats: dict) -> BioResult:
        reason = degenerate_reason(bio)
        if reason:
            return self.result(req.conversation, req.speaker, bio=bio, error=reason, **stats)
        if self.cache is not None:
            self.cache.put(
                req.key,
                {
                    "conversation_id": req.conversation.id,
                    "speaker": req.speaker,
                    "bio": bio,
                    "truncated": stats["truncated"],
                },
            )
        return self.result(req.conversation, req.speaker, bio=bio, **stats)

    def generate_chunks(
        self, requests: list[BioRequest], size: int | None = None, progress: Callable[[int], Any] | None = None
    ) -> Iterator[BioResult]:
        """`generate` over chunks of about `size` prompts (None: one chunk), calling `progress(bios)` after each.

        A conversation's prompts stay in one chunk, so the backend prefills their shared transcript once; shorter
        conversations come first, so a chunk's prompts have similar lengths and pad little.
        """
        for chunk in conversation_chunks(requests, size or max(len(requests), 1)):
            results = self.generate(chunk)
            yield from results
            if progress is not None:
                progress(len(results))

    def run(self, conversations: Iterable[Conversation], chunk: int = 32, progress=None) -> Iterator[BioResult]:
        """Local runner: plan everything, then generate in chunks of `chunk` prompts (`generate_chunks`)."""
        requests: list[BioRequest] = []
        for conv in conversations:
            done, todo = self.plan(conv)
            yield from done
            requests += todo
        yield from self.generate_chunks(requests, chunk, None if progress is None else progress.update)


def conversation_chunks(requests: list[BioRequest], size: int) -> list[list[BioRequest]]:
    """Requests in chunks of at most `size` (more only when one conversation has more speakers), each conversation
    whole, ordered by the length of its longest prompt."""
    by_conv: dict[int, list[BioRequest]] = {}
    for r in requests:
        by_conv.setdefault(id(r.conversation), []).append(r)
    chunks: list[list[BioRequest]] = []
    for group in sorted(by_conv.values(), key=lambda g: max(prompt_chars(r) for r in g)):
        if not chunks or (chunks[-1] and len(chunks[-1]) + len(group) > size):
            chunks.append([])
        chunks[-1] += group
    return chunks


def prompt_chars(request: BioRequest) -> int:
    return sum(len(m["content"]) for m in request.prompt.messages)


def paper_bios(conversations: Iterable[Conversation], results: Iterable[BioResult]) -> dict[str, list[Any]]:
    """The reference code's format: {conv_id: [bio of the speaker of utterance i for each i]}; "" where none.

    For the vector profiles each entry is the speaker's vector instead, null where none.
    """
    results = list(results)
    vectors = any(r.profile in VECTOR_PROFILES for r in results)
    by_pair = {(r.conversation_id, r.speaker): r.vector if vectors else r.bio for r in results if r.error is None}
    missing = None if vectors else ""
    return {c.id: [by_pair.get((c.id, u.speaker), missing) for u in c.utterances] for c in conversations}
