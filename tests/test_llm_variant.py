"""The LLM-based BiosERC: sample builder, answer-only loss, LoRA training, label scoring, generation, merging.

    /work/venv/bin/python -m pytest -q tests/test_llm_variant.py

No download: a random 2-layer Llama with a ChatML byte-level BPE tokenizer is written to a temp folder.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from bioserc.artifacts import read_manifest
from bioserc.labels import LABEL_SETS
from bioserc.models.classifier import load_classifier
from bioserc.models.llm_encoding import ChatEncoder, pack, utterance_bio
from bioserc.models.llm_scoring import INVALID, LlmClassifier, check_scoring, label_loglik, parse_answer
from bioserc.prompts import erc_llm
from bioserc.prompts.erc_llm import ERC_PROMPT_VERSION, ErcPromptConfig, erc_messages
from bioserc.schema import Conversation, Utterance
from bioserc.training import llm_setup
from bioserc.training.evaluate import evaluate
from bioserc.training.evaluate import main as evaluate_main
from bioserc.training.merge_llm import merge
from bioserc.training.train_llm import load_config, main, train


pytestmark = pytest.mark.usefixtures("one_thread")


MELD = LABEL_SETS["meld"].labels
CUE = dict(zip(MELD, ["okay", "wow", "scared", "sad", "happy", "gross", "angry"], strict=True))
FILLER = ["the", "you", "we", "what", "really", "fine", "why", "yes", "no", "sure", "hello", "well"]
CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "training" / "configs").glob("*.yaml") if "lora" in p.stem)
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_corpus(n: int = 8, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    conversations = []
    for c in range(n):
        speakers = [f"SPEAKER_{k}" for k in range(rng.choice([2, 3]))]
        utterances = []
        for i in range(rng.randint(2, 6)):
            label = rng.choice(MELD)
            utterances.append(
                Utterance(i, rng.choice(speakers), " ".join([CUE[label], *rng.sample(FILLER, 2)]), label=label)
            )
        conversations.append(Conversation(f"conv{c}", utterances, {"label_set": "meld"}))
    return conversations


def tiny_llama(directory: Path) -> str:
    """A ChatML byte-level BPE trained on the prompt wording + a random 2-layer Llama (no tokens added later)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [
        erc_llm.SYSTEM,
        erc_llm.SYSTEM_BIO,
        erc_llm.SYSTEM_CONTEXT,
        erc_llm.USER_BIO,
        erc_llm.USER_NO_BIO,
        erc_llm.LABEL_LIST,
        " ".join(MELD),
        " ".join(CUE.values()),
        " ".join(FILLER),
        "SPEAKER_0 is calm",
    ] * 3
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return str(directory)


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("llm")
    convs = make_corpus()
    bios = [{"conversation_id": c.id, "speaker": s, "bio": f"{s} is calm"} for c in convs for s in c.speakers]
    return {
        "convs": convs,
        "bios": {(r["conversation_id"], r["speaker"]): r["bio"] for r in bios},
        "train": write_jsonl(root / "train.jsonl", (c.to_dict() for c in convs[:6])),
        "dev": write_jsonl(root / "dev.jsonl", (c.to_dict() for c in convs[6:])),
        "bios_file": write_jsonl(root / "bios.jsonl", bios),
        "model": tiny_llama(root / "tiny"),
    }


def encoder_for(corpus: dict, **prompt) -> ChatEncoder:
    from transformers import AutoTokenizer

    return ChatEncoder(AutoTokenizer.from_pretrained(corpus["model"]), MELD, ErcPromptConfig(**prompt))


def overrides(corpus: dict, out: Path, **kw) -> dict:
    return {
        "model": corpus["model"],
        "train_data": [corpus["train"]],
        "dev_data": [corpus["dev"]],
        "train_bios": [corpus["bios_file"]],
        "dev_bios": [corpus["bios_file"]],
        "output_dir": str(out),
        "label_set": "meld",
        "device": "cpu",
        **kw,
    }


def small_config(corpus: dict, out: Path, **kw):
    settings = {
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.0,
        "max_steps": 6,
        "logging_steps": 1,
        "save_steps": 3,
        "max_seq_length": 512,
        **kw,
    }
    return load_config(None, **overrides(corpus, out, **settings))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict:
    """One short LoRA run shared by the artifact, evaluation and merge tests."""
    out = tmp_path_factory.mktemp("run")
    return train(small_config(corpus, out))


def test_sample_has_window_bio_label_list_and_answer():
    conv = Conversation("c", [Utterance(i, f"SPEAKER_{i % 2}", f"line {i}", label="joy") for i in range(14)])
    messages = erc_messages(conv, 7, MELD, ErcPromptConfig(), bio="SPEAKER_1 is calm", answer="joy")
    system, user, answer = (m["content"] for m in messages)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] and answer == "joy"
    context = system.split("as a context \n", 1)[1].split("\n")
    assert context == [f" SPEAKER_{i % 2}: line {i}" for i in range(2, 13)]  # ±5: past and future
    assert "characteristic of this speaker, SPEAKER_1: \nSPEAKER_1 is calm\n" in system
    assert user.startswith(
        "Based on above conversation and characteristic of the speakers, which emotional label "
        'of SPEAKER_1 in the utterance "line 7".'
    )
    assert user.endswith("Answer with one of: neutral, surprise, fear, sadness, joy, disgust, anger.")
    edge = erc_messages(conv, 1, MELD, ErcPromptConfig(bio_mode="none", list_labels=False))
    assert len(edge) == 2 and "characteristic" not in edge[0]["content"] + edge[1]["content"]
    assert edge[0]["content"].split("as a context \n", 1)[1].count("\n") == 6  # lines 0..6
    assert (
        edge[1]["content"] == "Based on above conversation, which emotional label of SPEAKER_1 in the utterance "
        '"line 1".'
    )
    assert ErcPromptConfig().to_dict()["version"] == ERC_PROMPT_VERSION
    with pytest.raises(ValueError, match="bio_mode"):
        ErcPromptConfig(bio_mode="mlp")


def test_loss_covers_the_answer_tokens_only(corpus):
    encoder = encoder_for(corpus)
    conv = corpus["convs"][0]
    features = encoder.train_features(conv, 1, "SPEAKER_0 is calm")
    answer = encoder.answers[MELD.index(conv.utterances[1].label)]
    answered = [t for t, y in zip(features["input_ids"], features["labels"], strict=True) if y != -100]
    assert answered == answer and features["labels"][-len(answer) :] == answer
    assert all(y == -100 for y in features["labels"][: -len(answer)])
    assert encoder.tokenizer.decode(answer) == conv.utterances[1].label + "<|im_end|>"
    assert encoder.end_of_turn == "<|im_end|>" and encoder.stop_ids == [encoder.tokenizer.eos_token_id]
    prompt = encoder.tokenizer.decode(features["input_ids"][: -len(answer)])
    assert prompt.endswith("<|im_start|>assistant\n") and "SPEAKER_0 is calm" in prompt
    rows = pack([features, features], max_length=2 * len(features["input_ids"]))
    assert len(rows) == 1 and rows[0]["labels"] == features["labels"] * 2


def test_long_prompts_lose_context_first(corpus):
    conv = Conversation("long", [Utterance(i, "SPEAKER_0", "hello well " * 8, label="joy") for i in range(11)])
    full = encoder_for(corpus).prompt_ids(conv, 5)
    short = ChatEncoder(encoder_for(corpus).tokenizer, MELD, ErcPromptConfig(), max_length=len(full) - 10)
    ids = short.prompt_ids(conv, 5)
    assert len(ids) + max(map(len, short.answers)) <= len(full) - 10
    assert short.train_features(conv, 5)["labels"][-1] == short.answers[MELD.index("joy")][-1]


def test_lora_steps_change_only_lora_weights_and_lower_the_loss(corpus, tmp_path):
    from transformers import Trainer

    from bioserc.training.train_llm import training_arguments

    config = small_config(corpus, tmp_path, max_steps=8, save_steps=100)
    encoder = encoder_for(corpus)
    model = llm_setup.add_lora(
        llm_setup.load_base_model(config.model, "cpu", "fp32"), 4, 8, 0.0, ["all-linear"], False, False
    )
    assert {n.split("lora_")[0].rsplit(".", 2)[-2] for n, p in model.named_parameters() if p.requires_grad} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }  # all-linear, not lm_head
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    features, _ = llm_setup.build_features(corpus["convs"][:2], corpus["bios"], encoder)
    trainer = Trainer(
        model=model,
        args=training_arguments(config, "cpu", "fp32"),
        train_dataset=features[:4],
        data_collator=llm_setup.PadCollator(encoder.pad_id),
    )
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 8 and losses[-1] < losses[0]
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == ("lora_" in name), name


def test_training_writes_an_adapter_artifact(trained):
    adapter = Path(trained["adapter_dir"])
    manifest = read_manifest(str(adapter))
    assert manifest["kind"] == "lora-adapter" and manifest["prompt_version"] == ERC_PROMPT_VERSION
    assert manifest["labels"] == list(MELD) and manifest["prompt"]["window"] == 5
    assert Path(manifest["base_model"]).is_dir() and manifest["lora"]["r"] == 4
    assert (adapter / "adapter_model.safetensors").is_file() and not list(adapter.glob("*.bin"))
    assert (adapter / "dev_report.json").is_file() and (adapter / "chat_template.jinja").is_file()
    assert trained["steps"] == 6 and trained["train_tokens"] > 0 and math.isfinite(trained["train_loss"])


def test_resume_continues_from_the_trainer_checkpoint(corpus, tmp_path):
    first = train(small_config(corpus, tmp_path, max_steps=3, eval_mode="none"))
    assert (tmp_path / "checkpoint-3").is_dir()
    with pytest.raises(ValueError, match="--resume"):
        train(small_config(corpus, tmp_path, max_steps=4, eval_mode="none"))
    resumed = train(small_config(corpus, tmp_path, max_steps=4, eval_mode="none", resume=True))
    assert resumed["steps"] == 4 and resumed["train_tokens"] < first["train_tokens"]  # only step 4 was trained


def test_periodic_dev_evaluation_keeps_the_best_adapter(corpus, tmp_path):
    result = train(small_config(corpus, tmp_path, max_steps=4, eval_steps=2))
    history = [json.loads(line) for line in (tmp_path / "dev_metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [2, 4]
    best = max(history, key=lambda row: row["dev_weighted_f1"])
    report = json.loads((Path(result["adapter_dir"]) / "dev_report.json").read_text())
    assert (result["best_step"], result["dev_weighted_f1"]) == (best["step"], best["dev_weighted_f1"])
    assert report["weighted_f1"] == best["dev_weighted_f1"]


def test_label_scoring_is_valid_normalised_and_equals_full_sequences(corpus):
    from transformers import AutoModelForCausalLM

    encoder = encoder_for(corpus)
    model = AutoModelForCausalLM.from_pretrained(corpus["model"], attn_implementation="eager").eval()
    convs = corpus["convs"][:3]
    predictions = LlmClassifier(model, encoder).predict(convs, corpus["bios"], batch_size=3)
    assert [(p.conversation_id, p.index) for p in predictions] == [
        (c.id, u.index) for c in convs for u in c.utterances
    ]
    for p in predictions:
        assert (
            p.label in MELD
            and math.isclose(sum(p.probs), 1.0, abs_tol=1e-5)
            and p.label == MELD[max(range(len(MELD)), key=p.probs.__getitem__)]
        )
    prompts = [encoder.prompt_ids(c, i, "x") for c in convs for i in range(len(c.utterances))][:5]
    assert len(set(map(len, prompts))) > 1  # left padding is exercised
    fast = label_loglik(model, prompts, encoder.answers, encoder.pad_id)
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            for k, answer in enumerate(encoder.answers):
                logp = model(torch.tensor([prompt + answer])).logits[0].float().log_softmax(-1)
                naive = sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(answer))
                assert abs(fast[b, k].item() - naive.item()) < 1e-4
    normalised = label_loglik(model, prompts[:1], encoder.answers, encoder.pad_id, scoring="mean")
    lengths = torch.tensor([len(a) for a in encoder.answers], dtype=torch.float)
    torch.testing.assert_close(normalised[0], fast[0] / lengths, atol=1e-5, rtol=0)


def test_scoring_modes_rank_labels_by_their_own_rule(corpus):
    """sum / mean / first token: each equals its direct computation from full-sequence logits, and on labels of
    different token lengths the three rank the labels differently."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(corpus["model"], attn_implementation="eager").eval()
    labels = ["neutral", "joy", "anger", "fear", "happy and excited", "sadness"]  # distinct first letters
    encoder = ChatEncoder(encoder_for(corpus).tokenizer, labels, ErcPromptConfig())
    assert len(set(map(len, encoder.answers))) > 1
    conv = corpus["convs"][0]
    prompts = [
        encoder.prompt_ids(conv, i, utterance_bio(corpus["bios"], conv, i)) for i in range(len(conv.utterances))
    ]
    token_lp = []  # [prompt][label] -> log-probs of the answer's tokens, from one full forward per sequence
    with torch.no_grad():
        for prompt in prompts:
            token_lp.append([])
            for answer in encoder.answers:
                logp = model(torch.tensor([prompt + answer])).logits[0].float().log_softmax(-1)
                token_lp[-1].append([logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(answer)])
    direct = {
        "sum": [[sum(lp) for lp in row] for row in token_lp],
        "mean": [[sum(lp) / len(lp) for lp in row] for row in token_lp],
        "first": [[lp[0] for lp in row] for row in token_lp],
    }
    rankings = {}
    for scoring, expected in direct.items():
        got = label_loglik(model, prompts, encoder.answers, encoder.pad_id, scoring=scoring)
        torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=0)
        predictions = LlmClassifier(model, encoder, scoring=scoring).predict([conv], corpus["bios"])
        assert [p.label for p in predictions] == [
            labels[max(range(len(labels)), key=row.__getitem__)] for row in expected
        ]
        rankings[scoring] = [sorted(labels, key=lambda label, row=row: -row[labels.index(label)]) for row in expected]
    assert (
        rankings["sum"] != rankings["mean"]
        and rankings["sum"] != rankings["first"]
        and rankings["mean"] != rankings["first"]
    )


def test_first_token_scoring_refuses_labels_that_share_a_first_token(corpus):
    tokenizer = encoder_for(corpus).tokenizer
    clashing = ChatEncoder(tokenizer, ["neutral", "very sad", "joy", "very happy"], ErcPromptConfig())
    with pytest.raises(ValueError, match=r"'very sad' / 'very happy' share their first token"):
        LlmClassifier(None, clashing, scoring="first")
    check_scoring("mean", clashing.labels, clashing.answers)  # only "first" needs distinct first tokens
    with pytest.raises(ValueError, match=r"scoring 'max' is not one of \('sum', 'mean', 'first'\)"):
        LlmClassifier(None, clashing, scoring="max")


def test_evaluate_scores_an_adapter_and_counts_invalid_generations(corpus, trained, capsys):
    report = evaluate(trained["adapter_dir"], corpus["dev"], corpus["bios_file"], batch_size=4)
    n = sum(len(c.utterances) for c in corpus["convs"][6:])
    assert report["n"] == n and report["mode"] == "score" and "invalid" not in report
    assert report["weighted_f1"] == pytest.approx(trained["dev_weighted_f1"]) and report["scoring"] == "sum"
    summed = load_classifier(trained["adapter_dir"]).predict(corpus["convs"][6:], corpus["bios"])
    mean = load_classifier(trained["adapter_dir"], scoring="mean")
    assert mean.scoring == "mean" and [p.probs for p in mean.predict(corpus["convs"][6:], corpus["bios"])] != [
        p.probs for p in summed
    ]
    generated = evaluate(trained["adapter_dir"], corpus["dev"], corpus["bios_file"], batch_size=4, mode="generate")
    assert generated["n"] == n and 0 <= generated["invalid"] <= n
    assert generated["invalid_rate"] == generated["invalid"] / n
    assert generated["per_class"][INVALID]["support"] == 0
    assert sum(row[-1] for row in generated["confusion"]) == generated["invalid"]  # the "<invalid>" column
    assert (
        evaluate_main(
            [
                "--model",
                trained["adapter_dir"],
                "--data",
                corpus["dev"],
                "--bios",
                corpus["bios_file"],
                "--mode",
                "generate",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["invalid"] == generated["invalid"]


def test_generate_mode_parses_exact_matches_only(corpus, monkeypatch):
    from bioserc.models import llm_scoring

    assert parse_answer("joy<|im_end|>\n<|im_start|>", ["<|im_end|>"]) == "joy"
    assert parse_answer(" anger \n<pad><pad>", ["<|im_end|>", "<pad>"]) == "anger"
    answers = iter(["joy", "Joy", "anger.", "neutral", "", "sadness"])
    monkeypatch.setattr(llm_scoring, "generate_texts", lambda model, enc, prompts, n: [next(answers) for _ in prompts])
    conv = Conversation("g", [Utterance(i, "SPEAKER_0", "hello", label="joy") for i in range(6)])
    classifier = LlmClassifier(None, encoder_for(corpus, bio_mode="none"), mode="generate")
    classifier.model = torch.nn.Linear(1, 1)  # only train()/eval() are used with the stubbed generation
    out = classifier.generate([conv], None, batch_size=6)
    assert [g.valid for g in out] == [True, False, False, True, False, True]
    assert [g.prediction.label for g in out] == ["joy", INVALID, INVALID, "neutral", INVALID, "sadness"]
    assert out[1].prediction.probs == [0.0] * len(MELD) and out[0].prediction.probs[MELD.index("joy")] == 1.0


def test_merged_model_scores_like_base_plus_adapter(corpus, trained, tmp_path):
    merged_dir = tmp_path / "merged"
    manifest = merge(None, trained["adapter_dir"], str(merged_dir), dtype="float32")  # bf16 (default) rounds W
    assert manifest["kind"] == "hf-llm" and manifest["labels"] == list(MELD)
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    convs = corpus["convs"][6:]
    with_adapter = LlmClassifier.from_pretrained(trained["adapter_dir"], device="cpu")
    merged = LlmClassifier.from_pretrained(str(merged_dir), device="cpu")
    prompts = [
        with_adapter.encoder.prompt_ids(c, i, "SPEAKER_0 is calm") for c in convs for i in range(len(c.utterances))
    ]
    a = label_loglik(with_adapter.model, prompts, with_adapter.encoder.answers, with_adapter.encoder.pad_id)
    b = label_loglik(merged.model, prompts, merged.encoder.answers, merged.encoder.pad_id)
    base = LlmClassifier.from_pretrained(trained["adapter_dir"], device="cpu")
    with base.model.disable_adapter():
        c = label_loglik(base.model, prompts, base.encoder.answers, base.encoder.pad_id)
    assert (a - c).abs().max() > 1e-3  # the adapter learned something, so the comparison means something
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # tolerance: fp32 W + BA vs Wx + B(Ax)
    assert [p.label for p in merged.predict(convs, corpus["bios"])] == [
        p.label for p in with_adapter.predict(convs, corpus["bios"])
    ]


def test_qlora_needs_cuda_and_bitsandbytes(corpus, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="load_in_4bit.*CUDA GPU"):
        llm_setup.load_base_model(corpus["model"], "cpu", "fp32", load_in_4bit=True)
    qlora = next(p for p in CONFIGS if "qlora" in p.stem)
    with pytest.raises(ValueError, match="load_in_4bit.*CUDA GPU"):
        train(load_config(str(qlora), **overrides(corpus, tmp_path)))
    monkeypatch.setattr(llm_setup.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'bioserc\[qlora\]'"):
        llm_setup.load_base_model(corpus["model"], "cuda", "bf16", load_in_4bit=True)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_dry_run(corpus, tmp_path, path):
    """Each shipped config with its own settings; only the model, data and (QLoRA: CPU has no 4-bit) swapped."""
    shipped = load_config(str(path))
    assert shipped.label_set in path.stem and shipped.window == 5
    result = train(load_config(str(path), **overrides(corpus, tmp_path), load_in_4bit=False), dry_run=True)
    assert result["dry_run"] and math.isfinite(result["loss"]) and not any(tmp_path.iterdir())
    assert result["answer_tokens"] > 0 and result["precision"] == "fp32"
    if "paper" in path.stem:
        assert (shipped.lora_r, shipped.lora_alpha, shipped.lora_dropout, shipped.lora_target_modules) == (
            32,
            128,
            0.05,
            ["all-linear"],
        )
        assert (
            shipped.learning_rate,
            shipped.num_train_epochs,
            shipped.per_device_train_batch_size,
            shipped.gradient_accumulation_steps,
            shipped.max_seq_length,
            shipped.neftune_noise_alpha,
        ) == (3e-4, 3, 4, 4, 2048, 5.0)
        assert shipped.load_in_4bit == ("qlora" in path.stem) and shipped.chat_template == "chatml"


def test_cli_dry_run_applies_config_then_flags(corpus, tmp_path, capsys):
    argv = [
        "--config",
        str(CONFIGS[-1]),
        *[
            a
            for k, v in overrides(corpus, tmp_path).items()
            for a in (f"--{k}", *(v if isinstance(v, list) else [str(v)]))
        ],
        "--bio_mode",
        "none",
        "--lora_r",
        "2",
        "--dry-run",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] is True and out["trainable_parameters"] > 0
    with pytest.raises(ValueError, match="unknown training config"):
        load_config(None, encoder="minilm")


def test_class_quotas_move_from_the_corpus_mix_towards_equal_labels():
    counts = {"neutral": 470, "joy": 170, "fear": 30, "disgust": 5}
    assert llm_setup.class_quotas(counts, 100, 0.0) == {"neutral": 70, "joy": 25, "fear": 4, "disgust": 1}
    half = llm_setup.class_quotas(counts, 100, 0.5)
    equal = llm_setup.class_quotas(counts, 100, 1.0)
    assert sum(half.values()) == sum(equal.values()) == 100
    # fear and disgust hold fewer than an equal share: all of them are taken, the rest split evenly
    assert equal == {"neutral": 32, "joy": 33, "fear": 30, "disgust": 5}
    assert equal["neutral"] < half["neutral"] < 70 and 4 < half["fear"] <= equal["fear"]


def test_balanced_subset_takes_its_quotas_from_each_label(corpus):
    encoder = encoder_for(corpus)
    targets = [u.label for c in corpus["convs"] for u in c.utterances if u.label is not None]
    quotas = llm_setup.class_quotas(Counter(targets), 14, 1.0)
    features, dropped = llm_setup.build_features(
        corpus["convs"], corpus["bios"], encoder, 14, seed=3, class_balance=1.0
    )
    answers = Counter(
        encoder.tokenizer.decode([t for t in f["labels"] if t != -100]).split("<")[0].strip() for f in features
    )
    assert dropped == 0 and answers == {label: n for label, n in quotas.items() if n}
    again, _ = llm_setup.build_features(corpus["convs"], corpus["bios"], encoder, 14, seed=3, class_balance=1.0)
    assert again == features
