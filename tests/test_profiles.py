"""Speaker profile sources (`bioserc bios --profile`) on a tiny random Llama: vector shapes, determinism, the shared-
prefix prefill against each prompt run alone, cache keys, start-up errors, and `bioserc bios --profile scores` end to
end through the Beam pipeline."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tiny_llm import tiny_llama

from bioserc.bios.backends import make_backend
from bioserc.bios.base import GenerationConfig
from bioserc.bios.cache import BioCache, bio_key
from bioserc.bios.chat import render_chat
from bioserc.bios.extract import BioExtractor, paper_bios
from bioserc.bios.prefix import prefix_groups
from bioserc.bios.profiles import label_probabilities, label_token_ids
from bioserc.jsonio import read_jsonl
from bioserc.labels import LABEL_SETS, LabelSet
from bioserc.prompts.bio import transcript_text
from bioserc.schema import Conversation, Utterance


# The tiny tokenizer's first tokens tell these words apart (MELD's "neutral" and "fear" share one: see below).
LABELS = ("neutral", "sad", "angry", "tired")
CALLS = [
    Conversation(
        "c1",
        [
            Utterance(0, "Ann", "Ann is cheerful and talks fast."),
            Utterance(1, "Bob", "Bob sounds tired, answers briefly."),
            Utterance(2, "Ann", "They argue about the rent."),
            Utterance(3, "Carol", "hello there, how are you?"),
        ],
    ),
    Conversation(
        "c2", [Utterance(0, "Dan", "hello there, how are you?"), Utterance(1, "Eve", "They argue about the rent.")]
    ),
]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "llm"
    tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def backend(llm_dir, one_thread):
    return make_backend("transformers", str(llm_dir), batch_size=4)


def profiles(backend, profile: str, labels=LABELS, cache: BioCache | None = None) -> dict:
    extractor = BioExtractor(backend, GenerationConfig(max_new_tokens=8), profile=profile, labels=labels, cache=cache)
    return {(r.conversation_id, r.speaker): r for r in extractor.run(CALLS)}


def test_scores_are_label_probabilities_and_latent_is_the_hidden_state(backend):
    backend.counts = Counter()
    scores = profiles(backend, "scores")
    assert len(scores) == 5 and not any(r.error for r in scores.values())
    for r in scores.values():
        assert len(r.vector) == len(LABELS) and abs(sum(r.vector) - 1) < 1e-5 and min(r.vector) > 0
        assert (r.bio, r.profile, r.prompt_version, r.new_tokens) == ("", "scores", "scores-v1", 0)
        assert r.prompt_tokens > 0 and r.seconds >= 0
    counts = dict(backend.counts)  # one prefill per speaker, the transcript once per conversation, nothing decoded
    assert counts["prompts"] == 5 and "generated_tokens" not in counts
    assert counts["prefilled_tokens"] < counts["prompt_tokens"]
    latent = profiles(backend, "latent")
    assert {len(r.vector) for r in latent.values()} == {backend.model.config.hidden_size}
    assert all(r.profile == "latent" and r.bio == "" for r in latent.values())
    assert len({tuple(r.vector) for r in latent.values()}) == 5  # each speaker's question ends differently


def test_scores_match_a_plain_forward_of_the_prompt(backend):
    """The vector is the model's next-token distribution after the prompt, read at each label's first token and
    renormalised: recomputed here with one plain forward pass per prompt."""
    import torch

    extractor = BioExtractor(backend, profile="scores", labels=LABELS)
    ids = label_token_ids(backend.encode, LABELS)
    result = {(r.conversation_id, r.speaker): r.vector for r in extractor.run(CALLS)}
    for conv in CALLS:
        for speaker in conv.speakers:
            messages = extractor.speaker_request(conv, speaker, "").prompt.messages
            assert messages[-1]["content"] == f"{speaker}'s overall emotion:"
            tokens = backend.encode(render_chat(backend.tokenizer, messages))
            with torch.inference_mode():
                logits = backend.model(torch.tensor([tokens])).logits[0, -1]
            probs = torch.softmax(logits.double(), -1)[ids]
            assert result[(conv.id, speaker)] == pytest.approx((probs / probs.sum()).tolist(), abs=2e-6)


def test_shared_prefix_prefill_equals_each_prompt_alone(backend):
    """Speakers of one call share the transcript: prefilled once, its KV cache branched, then each question; logits
    and hidden states must equal a prefill of each prompt on its own."""
    extractor = BioExtractor(backend, profile="latent", labels=LABELS)
    prompts = [extractor.speaker_request(c, s, "").prompt.messages for c in CALLS for s in c.speakers]
    backend.share_prefix, backend.counts = True, Counter()
    shared = backend.prefill_last(prompts, hidden=True)
    shared_counts = dict(backend.counts)
    backend.share_prefix = False
    try:
        alone = [backend.prefill_last([p], hidden=True)[0] for p in prompts]
    finally:
        backend.share_prefix = True
    assert shared_counts["prefilled_tokens"] < sum(a.prompt_tokens for a in alone) * 0.6
    # On CPU each call's transcript is a forward pass of its own: the only pad columns computed are those that line
    # up the questions of one call's speakers, never a shorter transcript padded to a longer one.
    tokens = [backend.encode(render_chat(backend.tokenizer, p)) for p in prompts]
    groups = prefix_groups(tokens)
    assert len(groups) == len(CALLS)
    rests = [[len(tokens[i]) - g.shared for i in g.members] for g in groups]
    assert shared_counts["prefill_slots"] - shared_counts["prefilled_tokens"] == sum(
        max(r) * len(r) - sum(r) for r in rests
    )
    for s, a in zip(shared, alone, strict=True):
        assert s.prompt_tokens == a.prompt_tokens
        assert np.abs(s.logits - a.logits).max() < 1e-5 and np.abs(s.hidden - a.hidden).max() < 1e-5


def test_vector_profiles_are_deterministic(llm_dir, one_thread):
    for profile in ("scores", "latent"):
        runs = [profiles(make_backend("transformers", str(llm_dir), batch_size=2), profile) for _ in range(2)]
        assert {k: r.vector for k, r in runs[0].items()} == {k: r.vector for k, r in runs[1].items()}


def test_emotion_profile_is_a_bio_with_its_own_prompt(backend):
    result = profiles(backend, "emotion")
    for (_, speaker), r in result.items():
        assert (r.profile, r.prompt_version, r.vector) == ("emotion", "emotion-v1", None)
        assert r.bio.startswith(f"Overall mood: {speaker} feels") or r.error
    assert "vector" not in next(iter(result.values())).to_dict()


def test_cache_keys_follow_source_label_set_and_model(backend, llm_dir, tmp_path, one_thread):
    conv, speaker = CALLS[0], "Ann"

    def key(profile, labels=LABELS, on=backend):
        return BioExtractor(on, profile=profile, labels=labels).key(conv, speaker)

    keys = [key("text"), key("emotion"), key("scores"), key("latent"), key("scores", LABELS[:3]), key("latent", None)]
    assert len(set(keys)) == len(keys)
    # text keys are the ones bioserc wrote before profiles existed, so their caches stay valid
    config = GenerationConfig()
    assert keys[0] == bio_key(
        transcript_text(conv),
        speaker,
        backend.identity(),
        "bio-v1",
        {**config.to_dict(), "mode": "per-speaker", "words": 60},
    )
    copy = tmp_path / "retrained"
    shutil.copytree(llm_dir, copy)
    config_file = copy / "config.json"
    config_file.write_text(config_file.read_text() + "\n")  # other content, so another model for the cache
    assert key("scores", on=make_backend("transformers", str(copy))) != keys[2]

    cache_dir = str(tmp_path / "cache")
    first = profiles(backend, "scores", cache=BioCache(cache_dir))
    again = profiles(backend, "scores", cache=BioCache(cache_dir))
    assert all(r.cached for r in again.values()) and not any(r.cached for r in first.values())
    assert {k: r.vector for k, r in again.items()} == {k: r.vector for k, r in first.items()}
    assert not any(r.cached for r in profiles(backend, "scores", LABELS[::-1], BioCache(cache_dir)).values())
    assert not any(r.cached for r in profiles(backend, "latent", cache=BioCache(cache_dir)).values())


def test_labels_sharing_a_first_token_are_refused_by_name(backend):
    with pytest.raises(ValueError, match="labels 'neutral' and 'fear' start with the same token"):
        BioExtractor(backend, profile="scores", labels=LABEL_SETS["meld"].labels)
    assert label_probabilities([0.0, 5.0, 1.0, 3.0], [3, 1]) == pytest.approx([1 / (1 + np.e**2), 1 / (1 + np.e**-2)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--profile", "scores", "--backend", "openai", "--base-url", "http://127.0.0.1:9", "--dataset", "meld"],
            "profile scores needs a local backend (transformers or onnx); the openai backend only returns generated "
            "text",
        ),
        (
            ["--profile", "latent", "--backend", "trtllm"],
            "profile latent needs a local backend (transformers or onnx)",
        ),
        (["--profile", "latent", "--backend", "onnx"], "profile latent needs the transformers backend"),
        (["--profile", "scores"], "profile scores needs the label set whose words it scores (--dataset"),
    ],
)
def test_profiles_a_backend_cannot_make_are_usage_errors_before_anything_loads(flags, message, tmp_path, capsys):
    from bioserc import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bios", str(tmp_path / "calls.jsonl"), "-o", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bios_profile_scores_end_to_end(llm_dir, backend, tmp_path, monkeypatch, one_thread):
    """`bioserc bios --profile scores --dataset D` through the Beam pipeline: one row per (conversation, speaker) with
    the label-ordered probabilities, the same as the library's; bios.paper.json holds each utterance's vector."""
    from bioserc import cli

    monkeypatch.setitem(LABEL_SETS, "tiny", LabelSet("tiny", LABELS))
    src = tmp_path / "calls.jsonl"
    src.write_text("".join(c.to_json() + "\n" for c in CALLS))
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "bios",
                str(src),
                "-o",
                str(out),
                "--model",
                str(llm_dir),
                "--profile",
                "scores",
                "--dataset",
                "tiny",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    rows = {(r["conversation_id"], r["speaker"]): r for r in read_jsonl(str(out / "bios.jsonl"))}
    assert not list(read_jsonl(str(out / "dead_letter.jsonl")))
    expected = profiles(backend, "scores")
    assert rows.keys() == expected.keys()
    for pair, row in rows.items():
        assert set(row) == {
            "conversation_id",
            "speaker",
            "bio",
            "model",
            "prompt_version",
            "truncated",
            "prompt_tokens",
            "new_tokens",
            "cached",
            "error",
            "profile",
            "vector",
            "seconds",
        }
        assert (row["profile"], row["prompt_version"], row["bio"], row["cached"]) == ("scores", "scores-v1", "", False)
        assert row["vector"] == expected[pair].vector and abs(sum(row["vector"]) - 1) < 1e-5
    paper = json.loads((out / "bios.paper.json").read_text())
    assert paper == paper_bios(CALLS, expected.values())
    assert paper["c1"][0] == paper["c1"][2] == rows[("c1", "Ann")]["vector"]
