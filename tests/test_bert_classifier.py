"""The BERT-based BiosERC classifier, its training script and metrics, on a tiny random BERT and a generated corpus.

    /work/venv/bin/python -m pytest -q tests/test_bert_classifier.py

No download: the encoder is a random 32-wide BertModel with a WordPiece vocab written here.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score, precision_recall_fscore_support

from bioserc.labels import LABEL_SETS
from bioserc.metrics import classification_report, weighted_f1
from bioserc.models import BiosercBert, BiosercBertConfig, Collator, load_bios
from bioserc.models.predict import predict
from bioserc.schema import Conversation, Utterance
from bioserc.training import train_bert
from bioserc.training.evaluate import evaluate
from bioserc.training.train_bert import load_config, main, make_optimizer, train


pytestmark = pytest.mark.usefixtures("one_thread")


MELD = LABEL_SETS["meld"].labels
CUE = dict(zip(MELD, ["okay", "wow", "scared", "sad", "happy", "gross", "angry"], strict=True))  # learnable signal
FILLER = ["the", "you", "we", "what", "really", "fine", "why", "yes", "no", "sure", "hello", "well"]
BIO_WORDS = ["is", "calm", "loud", "kind", "tired", "and", "friendly", "nervous"]
CONFIGS = sorted(
    p for p in (Path(__file__).parents[1] / "training" / "configs").glob("*.yaml") if "lora" not in p.stem
)  # the *_lora configs are train_llm's (tests/test_llm_variant.py)


def make_corpus(n: int = 20, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    conversations = []
    for c in range(n):
        speakers = [f"SPEAKER_{k}" for k in range(rng.choice([2, 3]))]
        utterances = []
        for i in range(rng.randint(3, 8)):
            label = MELD[(c + i) % len(MELD)] if rng.random() < 0.5 else rng.choice(MELD)
            words = [CUE[label], *rng.sample(FILLER, rng.randint(1, 4))]
            rng.shuffle(words)
            utterances.append(Utterance(i, rng.choice(speakers), " ".join(words), label=label))
        conversations.append(Conversation(f"conv{c}", utterances, {"label_set": "meld"}))
    return conversations


def bio_rows(conversations: list[Conversation], seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"conversation_id": c.id, "speaker": s, "bio": f"{s} is " + " ".join(rng.sample(BIO_WORDS[1:], 3))}
        for c in conversations
        for s in c.speakers
    ]


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_encoder(directory: Path, layers: int) -> str:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True)
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        ":",
        "_",
        "0",
        "1",
        "2",
        "speaker",
        *CUE.values(),
        *FILLER,
        *BIO_WORDS,
    ]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    convs = make_corpus()
    train, dev = convs[:14], convs[14:]
    rows = bio_rows(convs)
    return {
        "convs": convs,
        "bios": {(r["conversation_id"], r["speaker"]): r["bio"] for r in rows},
        "train": write_jsonl(root / "train.jsonl", (c.to_dict() for c in train)),
        "dev": write_jsonl(root / "dev.jsonl", (c.to_dict() for c in dev)),
        "train_bios": write_jsonl(root / "train_bios.jsonl", rows[:-1]),  # one speaker without a bio
        "dev_bios": write_jsonl(root / "dev_bios.jsonl", rows),
        "encoder": make_encoder(root / "encoder", layers=2),
        "encoder12": make_encoder(root / "encoder12", layers=12),
    }


def make_model(corpus: dict, bio_mode: str = "mlp", **kw) -> BiosercBert:
    torch.manual_seed(0)
    settings = {"encoder": corpus["encoder"], "bio_mode": bio_mode, "max_length": 64, "bio_max_length": 32, **kw}
    return BiosercBert.from_encoder(BiosercBertConfig(**settings))


def train_config(corpus: dict, out: Path, **kw):
    return load_config(
        None,
        train_data=corpus["train"],
        dev_data=corpus["dev"],
        train_bios=corpus["train_bios"],
        dev_bios=corpus["dev_bios"],
        encoder=corpus["encoder"],
        max_length=64,
        bio_max_length=32,
        batch_size=2,
        lr_encoder=1e-3,
        lr_head=3e-3,
        warmup_ratio=0.0,
        patience=0,
        output_dir=str(out),
        device="cpu",
        **kw,
    )


def test_training_lowers_the_loss_and_writes_a_loadable_best_model(corpus, tmp_path):
    result = train(train_config(corpus, tmp_path, max_steps=30, eval_every=10))
    losses = [row["train_loss"] for row in result["history"]]
    assert [row["step"] for row in result["history"]] == [10, 20, 30]
    assert losses[-1] < losses[0]
    for name in (
        "metrics.jsonl",
        "training_curve.png",
        "confusion_dev.png",
        "best/model.safetensors",
        "best/dev_report.json",
        "last/model.safetensors",
        "last/trainer_state.pt",
    ):
        assert (tmp_path / name).is_file(), name
    report = evaluate(result["best_dir"], corpus["dev"], corpus["dev_bios"])
    assert report["weighted_f1"] == pytest.approx(result["best_dev_weighted_f1"])
    assert report["bios_missing"] == 0 and set(report["per_class"]) == set(MELD)


def test_resume_continues_the_step_count(corpus, tmp_path):
    first = train(train_config(corpus, tmp_path, max_steps=2, eval_every=1))
    assert first["steps"] == 2
    with pytest.raises(ValueError, match="--resume"):
        train(train_config(corpus, tmp_path, max_steps=4, eval_every=1))
    resumed = train(train_config(corpus, tmp_path, max_steps=4, eval_every=1, resume=True))
    assert resumed["steps"] == 4
    assert [row["step"] for row in resumed["history"]] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "last" / "trainer_state.json").read_text())["step"] == 4


def test_ema_weights_are_evaluated_saved_and_resumed(corpus, tmp_path, monkeypatch):
    def weights(folder: Path) -> dict[str, torch.Tensor]:
        return BiosercBert.from_pretrained(str(folder)).state_dict()

    straight = train(train_config(corpus, tmp_path / "straight", max_steps=4, eval_every=1, ema_decay=0.5))
    raw, averaged = weights(tmp_path / "straight" / "last"), weights(tmp_path / "straight" / "last" / "ema")
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)  # the average lags the trained weights
    best = weights(tmp_path / "straight" / "best")
    if straight["best_step"] == 4:  # best/ holds the averaged weights, not the trained ones
        assert all(torch.equal(best[k], averaged[k]) for k in best)
    report = evaluate(straight["best_dir"], corpus["dev"], corpus["dev_bios"])
    assert report["weighted_f1"] == pytest.approx(straight["best_dev_weighted_f1"])

    unfinished = train_bert.finished
    monkeypatch.setattr(train_bert, "finished", lambda run: run.state.step >= 2)  # a run stopped at step 2 of 4
    train(train_config(corpus, tmp_path / "resumed", max_steps=4, eval_every=1, ema_decay=0.5))
    monkeypatch.setattr(train_bert, "finished", unfinished)
    train(train_config(corpus, tmp_path / "resumed", max_steps=4, eval_every=1, ema_decay=0.5, resume=True))
    resumed = weights(tmp_path / "resumed" / "last" / "ema")
    assert all(torch.allclose(resumed[k], averaged[k], atol=1e-6) for k in averaged)
    with pytest.raises(ValueError, match="ema_decay"):
        train_config(corpus, tmp_path / "bad", ema_decay=1.0)


def test_save_and_reload_predict_identically(corpus, tmp_path):
    model = make_model(corpus, bio_mode="attn")
    model.save_pretrained(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pth")) == []
    assert (tmp_path / "labels.txt").read_text().split() == list(MELD)
    reloaded = BiosercBert.from_pretrained(str(tmp_path))
    before = predict(model, corpus["convs"][:6], corpus["bios"], batch_size=3)
    after = predict(reloaded, corpus["convs"][:6], corpus["bios"], batch_size=3)
    assert before == after and len(before) == sum(len(c.utterances) for c in corpus["convs"][:6])


def test_auto_classes_load_a_saved_model_offline(corpus, tmp_path):
    from transformers import AutoConfig, AutoModel

    model = make_model(corpus, bio_mode="mlp", max_length=20)  # 20: transformers' own generation default
    model.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "bioserc-bert" and saved["architectures"] == ["BiosercBert"]
    assert saved["max_length"] == 20 and saved["labels"] == list(MELD) and saved["encoder_config"]["hidden_size"] == 32
    assert isinstance(AutoConfig.from_pretrained(str(tmp_path)), BiosercBertConfig)
    auto = AutoModel.from_pretrained(str(tmp_path))
    assert type(auto) is BiosercBert and auto.tokenizer is not None and auto.config.max_length == 20
    convs = corpus["convs"][:5]
    assert predict(auto, convs, corpus["bios"], batch_size=2) == predict(model, convs, corpus["bios"], batch_size=2)


def test_checkpoints_written_before_pretrainedmodel_still_load(corpus, tmp_path):
    """The old format: config.json = the settings + `encoder_config`, no model_type; weights by safetensors."""
    from safetensors.torch import save_file

    model = make_model(corpus, bio_mode="attn")
    model.save_pretrained(str(tmp_path))
    old = {k: v for k, v in model.config.settings().items() if k != "encode_chunk"}
    (tmp_path / "config.json").write_text(json.dumps({**old, "encoder_config": model.encoder.config.to_dict()}))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    reloaded = BiosercBert.from_pretrained(str(tmp_path), "cpu")
    assert reloaded.config.settings() == model.config.settings()
    convs, bios = corpus["convs"][:4], corpus["bios"]
    assert predict(reloaded, convs, bios, batch_size=2) == predict(model, convs, bios, batch_size=2)


def test_a_checkpoint_missing_weights_is_refused(corpus, tmp_path):
    from safetensors.torch import save_file

    model = make_model(corpus)
    model.save_pretrained(str(tmp_path))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head_bio.")}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="head_bio.weight"):
        BiosercBert.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("bio_mode", ["mlp", "none"])
def test_chunked_encoding_gives_the_same_logits(corpus, bio_mode):
    model = make_model(corpus, bio_mode=bio_mode).eval()
    batch = Collator(model.tokenizer, model.config)(corpus["convs"][:6], corpus["bios"])
    seen = []
    model.encoder.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    with torch.no_grad():
        whole = model(**batch.inputs)
        windows, seen[:] = seen[0], []
        model.config.encode_chunk = 4
        chunked = model(**batch.inputs)
    assert windows > 4 and max(seen) <= 4 and sum(seen[: math.ceil(windows / 4)]) == windows
    torch.testing.assert_close(chunked, whole, atol=0, rtol=0)


def test_old_config_keys_are_patched_on_load():
    config = BiosercBertConfig.from_dict({"encoder": "x", "label_set": "emorynlp", "retired_option": 1})
    assert config.window == 2 and config.labels == list(LABEL_SETS["emorynlp"].labels) and config.num_labels == 7


@pytest.mark.parametrize(
    ("bio_mode", "context", "positions"),
    [("mlp", "transformer", True), ("attn", "transformer", True), ("mlp", "gru", True), ("none", "gru", False)],
)
def test_padding_does_not_change_a_conversation(corpus, bio_mode, context, positions):
    """Eval-mode logits of a conversation are the same alone or padded beside a longer one with more speakers (the
    BiGRU's backward direction must not read the padding)."""
    model = make_model(corpus, bio_mode=bio_mode, context=context, positions=positions).eval()
    short = Conversation("solo", [Utterance(i, "SPEAKER_0", f"{CUE['joy']} fine", label="joy") for i in range(3)])
    long = max(corpus["convs"], key=lambda c: (len(c.speakers), len(c.utterances)))
    assert len(long.speakers) == 3 and len(long.utterances) > 3
    bios = {**corpus["bios"], ("solo", "SPEAKER_0"): "SPEAKER_0 is calm"}
    collator = Collator(model.tokenizer, model.config)
    with torch.no_grad():
        alone = model(**collator([short], bios).inputs)
        batched = model(**collator([long, short], bios).inputs)
    assert torch.isfinite(batched).all() and torch.isfinite(alone).all()  # a lone speaker has no inter-speaker keys
    torch.testing.assert_close(batched[1, :3], alone[0], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(**collator([long], bios).inputs)[0], batched[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("bio_mode", "context"), [("mlp", "transformer"), ("attn", "transformer"), ("none", "gru")])
def test_every_parameter_gets_a_gradient_and_is_optimised(corpus, bio_mode, context):
    model = make_model(corpus, bio_mode=bio_mode, context=context).train()
    batch = Collator(model.tokenizer, model.config)(corpus["convs"][:3], corpus["bios"])
    assert ("bio_input_ids" in batch.inputs) == (bio_mode != "none")
    logits = model(**batch.inputs)
    assert logits.shape == (*batch.labels.shape, len(MELD))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    optimizer, _ = make_optimizer(model, train_config(corpus, Path("unused")), total_steps=10)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters()}


def test_freeze_layers_freezes_embeddings_and_bottom_layers(corpus):
    model = make_model(corpus, freeze_layers=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("encoder.embeddings.", "encoder.encoder.layer.0.")) for n in frozen)
    assert any(n.startswith("encoder.embeddings.") for n in frozen)
    with pytest.raises(ValueError, match="only 2 layers"):
        make_model(corpus, freeze_layers=3)


def test_encoder_layers_keeps_the_bottom_pretrained_layers_and_reloads(corpus, tmp_path):
    from transformers import AutoModel

    full = AutoModel.from_pretrained(corpus["encoder12"])
    model = make_model(corpus, encoder=corpus["encoder12"], encoder_layers=3)
    assert model.encoder.config.num_hidden_layers == 3 and len(model.encoder.encoder.layer) == 3
    kept, pretrained = model.encoder.state_dict(), full.state_dict()
    for name, tensor in kept.items():
        torch.testing.assert_close(tensor, pretrained[name], msg=name)  # the bottom layers, not a fresh init
    model.save_pretrained(tmp_path / "m")
    again = BiosercBert.from_pretrained(tmp_path / "m")
    assert again.config.encoder_layers == 3 and len(again.encoder.encoder.layer) == 3
    with pytest.raises(ValueError, match="encoder_layers=13 but .* has 12"):
        make_model(corpus, encoder=corpus["encoder12"], encoder_layers=13)


def test_missing_bios_are_flagged_and_loaded_bios_skip_errors(corpus, tmp_path):
    path = write_jsonl(
        tmp_path / "bios.jsonl",
        [
            {"conversation_id": "a", "speaker": "S", "bio": "S is calm"},
            {"conversation_id": "a", "speaker": "T", "bio": "", "error": "x"},
        ],
    )
    assert load_bios(path) == {("a", "S"): "S is calm"}
    model = make_model(corpus)
    conv = corpus["convs"][0]
    batch = Collator(model.tokenizer, model.config)([conv], {})
    assert batch.bio_missing == [(conv.id, s) for s in conv.speakers]


def test_long_windows_keep_both_target_markers(corpus):
    model = make_model(corpus, max_length=12)
    conv = Conversation("long", [Utterance(i, "SPEAKER_1", " ".join(FILLER), label="neutral") for i in range(5)])
    batch = Collator(model.tokenizer, model.config)([conv])
    ids, target = batch.inputs["input_ids"], batch.inputs["target_mask"].bool()
    assert ids.shape[1] <= 12
    sep = model.tokenizer.sep_token_id
    for row, span in zip(ids, target, strict=True):
        marked = row[span]
        assert marked[0] == sep and marked[-1] == sep and len(marked) >= 3


def test_weighted_f1_equals_sklearn():
    rng = np.random.default_rng(0)
    labels = list(MELD)
    y_true = list(rng.choice(labels[:6], 200))  # "anger" never gold
    y_pred = list(rng.choice(labels, 200, p=[0.4, 0.1, 0.1, 0.1, 0.2, 0.0, 0.1]))  # "disgust" never predicted
    report = classification_report(y_true, y_pred, labels)
    assert weighted_f1(y_true, y_pred, labels) == pytest.approx(100 * f1_score(y_true, y_pred, average="weighted"))
    assert report["macro_f1"] == pytest.approx(100 * f1_score(y_true, y_pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        row = report["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((100 * p[i], 100 * r[i], 100 * f[i]))
        assert row["support"] == s[i]
    assert report["confusion"] == sk_confusion(y_true, y_pred, labels=labels).tolist()
    json.dumps(report)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_dry_run(corpus, tmp_path, path):
    """Each shipped config builds with its own settings, only the encoder and data swapped for the tiny local ones."""
    shipped = load_config(str(path))
    assert shipped.label_set in path.stem
    overrides = {
        "encoder": corpus["encoder12"],
        "train_data": [corpus["train"]],
        "dev_data": [corpus["dev"]],
        "train_bios": [corpus["train_bios"]],
        "dev_bios": [corpus["dev_bios"]],
        "output_dir": str(tmp_path),
        "label_set": "meld",
        "device": "cpu",
    }
    result = train(load_config(str(path), **overrides), dry_run=True)
    assert result["dry_run"] and math.isfinite(result["loss"]) and not any(tmp_path.iterdir())
    if "paper" in path.stem:
        assert (
            shipped.lr_encoder,
            shipped.window,
            shipped.freeze_layers,
            shipped.epochs,
            shipped.grad_accum,
            shipped.batch_size,
        ) == (5e-6, 2, 10, 30, 2, 1)
        assert result["trainable_parameters"] < result["parameters"]


def test_cli_dry_run_applies_config_then_flags(corpus, tmp_path, capsys):
    argv = [
        "--config",
        str(CONFIGS[0]),
        "--label_set",
        "meld",
        "--encoder",
        corpus["encoder"],
        "--train_data",
        corpus["train"],
        "--dev_data",
        corpus["dev"],
        "--train_bios",
        corpus["train_bios"],
        "--dev_bios",
        corpus["dev_bios"],
        "--bio_mode",
        "none",
        "--output_dir",
        str(tmp_path),
        "--dry-run",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["dry_run"] is True
    with pytest.raises(ValueError, match="unknown training config"):
        load_config(None, learning_rate=1.0)


def test_model_card_opens_with_hugging_face_metadata(tmp_path):
    import yaml

    from bioserc.export.model_card import write_model_card

    (tmp_path / "config.json").write_text(json.dumps({"encoder": "minilm"}))
    (tmp_path / "dev_report.json").write_text(
        json.dumps(classification_report(["joy", "anger"], ["joy", "joy"], list(MELD)))
    )
    fields = {
        "label_set": "meld",
        "labels": list(MELD),
        "bio_mode": "none",
        "window": 0,
        "max_length": 64,
        "bio_max_length": 128,
    }
    text = Path(
        write_model_card(str(tmp_path), fields, {}, {"fp32_logits_max_abs_diff": 1e-6}, "int8", "serving_artifacts/x")
    ).read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "bioserc" and meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["meld"] and "emotion-recognition-in-conversation" in meta["tags"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "validation"
    assert result["metrics"][0]["type"] == "f1" and result["metrics"][0]["value"] == pytest.approx(33.33)
    assert "# BiosERC-BERT classifier (meld, int8)" in text


def test_train_help_lists_the_trainers(capsys):
    from bioserc.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "{bert,llm}" in out and "bioserc train bert --help" in out and "bioserc train llm --help" in out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "bert", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bioserc train bert") and "(default: 0.2)" in out  # --dropout's default
