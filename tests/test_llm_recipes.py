"""LLM recipes around training: bf16 merges, the TensorRT-LLM serve-only notes, the paper-scale QLoRA dry run and the
training `threads` setting.

    .venv/bin/python -m pytest -q tests/test_llm_recipes.py

No download and no weights for the 13b: a Llama-2-13b config.json beside a tiny tokenizer is all the dry run reads.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from tiny_llm import tiny_llama, tiny_tokenizer

from bioserc.artifacts import read_manifest, verify_artifact, write_manifest
from bioserc.labels import LABEL_SETS
from bioserc.schema import Conversation, Utterance
from bioserc.training import llm_setup, merge_llm
from bioserc.training.train_llm import load_config, main, train


pytestmark = pytest.mark.usefixtures("one_thread")

MELD = LABEL_SETS["meld"].labels
CONFIGS = Path(__file__).parents[1] / "training" / "configs"
QLORA = str(CONFIGS / "meld_llama2_13b_qlora_paper.yaml")
LLAMA2_13B = {
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}


def conversations() -> list[Conversation]:
    return [
        Conversation(
            f"c{c}",
            [Utterance(i, f"S{i % 2}", f"hello there {c} {i}", label=MELD[(c + i) % len(MELD)]) for i in range(4)],
            {"label_set": "meld"},
        )
        for c in range(6)
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data")
    convs = conversations()
    (root / "train.jsonl").write_text("".join(json.dumps(c.to_dict()) + "\n" for c in convs[:4]))
    (root / "dev.jsonl").write_text("".join(json.dumps(c.to_dict()) + "\n" for c in convs[4:]))
    (root / "bios.jsonl").write_text(
        "".join(
            json.dumps({"conversation_id": c.id, "speaker": s, "bio": f"{s} is calm"}) + "\n"
            for c in convs
            for s in c.speakers
        )
    )
    return {
        "train_data": str(root / "train.jsonl"),
        "dev_data": str(root / "dev.jsonl"),
        "train_bios": str(root / "bios.jsonl"),
        "dev_bios": str(root / "bios.jsonl"),
    }


@pytest.fixture(scope="module")
def llama13b(tmp_path_factory) -> Path:
    """A stand-in for /models/Llama-2-13b-chat-hf without its 26 GB: the real config.json and a tokenizer only."""
    from transformers import LlamaConfig

    directory = tmp_path_factory.mktemp("models") / "Llama-2-13b-chat-hf"
    tokenizer = tiny_tokenizer(directory)
    LlamaConfig(**LLAMA2_13B, pad_token_id=tokenizer.pad_token_id).save_pretrained(directory)
    return directory


def argv(data: dict[str, str], *extra: str) -> list[str]:
    return ["--config", QLORA, *[a for key, path in data.items() for a in (f"--{key}", path)], *extra]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A LoRA adapter (random, non-zero B so the merge changes the weights) on a tiny fp32 Llama."""
    from transformers import AutoTokenizer

    from bioserc.models.llm_encoding import ChatEncoder
    from bioserc.prompts.erc_llm import ErcPromptConfig

    root = tmp_path_factory.mktemp("lora")
    tiny_llama(root / "base")
    model = llm_setup.add_lora(
        llm_setup.load_base_model(str(root / "base"), "cpu", "fp32"),
        4,
        8,
        0.0,
        ["all-linear"],
        quantized=False,
        gradient_checkpointing=False,
    )
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    prompt = ErcPromptConfig(window=1, bio_mode="none")
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(root / "base"), MELD, prompt)
    llm_setup.save_adapter(
        model, encoder, str(root / "adapter"), base_model=str(root / "base"), label_set="meld", lora={"r": 4}
    )
    return root / "adapter"


def stored_dtypes(directory: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as fh:
        return {fh.get_slice(name).get_dtype() for name in fh.keys()}


def test_merge_writes_bfloat16_by_default_and_scores_in_float32_on_cpu(adapter, tmp_path):
    from bioserc.models.llm_scoring import LlmClassifier

    assert merge_llm.main(["--adapter", str(adapter), "-o", str(tmp_path / "bf16")]) == 0
    assert merge_llm.main(["--adapter", str(adapter), "-o", str(tmp_path / "fp32"), "--dtype", "float32"]) == 0
    assert stored_dtypes(tmp_path / "bf16") == {"BF16"} and stored_dtypes(tmp_path / "fp32") == {"F32"}
    assert verify_artifact(str(tmp_path / "bf16"), "hf-llm")["dtype"] == "bfloat16"
    assert read_manifest(str(tmp_path / "fp32"))["dtype"] == "float32"
    convs = conversations()[:2]
    bf16, fp32 = (LlmClassifier.from_pretrained(str(tmp_path / name), device="cpu") for name in ("bf16", "fp32"))
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}  # upcast on load: CPU bf16 is slow
    a = torch.tensor([p.probs for p in bf16.predict(convs)])
    b = torch.tensor([p.probs for p in fp32.predict(convs)])
    assert (a - b).abs().max() < 0.02  # the same model up to bf16 rounding of the weights


def test_serve_only_names_the_model_folders_not_an_embedded_name(tmp_path, monkeypatch):
    from bioserc import embedded
    from bioserc.export.cli import main as export_main

    merged, adapter, smollm2 = tmp_path / "merged", tmp_path / "adapter", tmp_path / "cache" / "smollm2-135m"
    merged.mkdir()
    tiny_llama(merged)
    write_manifest(
        str(merged),
        "hf-llm",
        model_family="bioserc-llm",
        label_set="meld",
        labels=MELD,
        base_model="smollm2",
        dtype="bfloat16",
    )
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    write_manifest(str(adapter), "lora-adapter", base_model="smollm2", labels=MELD)
    smollm2.mkdir(parents=True)
    monkeypatch.setattr(embedded, "model_path", lambda name, progress=True: smollm2)  # no conversion in a test
    monkeypatch.chdir(tmp_path)
    assert (
        export_main(
            [
                "trtllm",
                "--model",
                "merged",
                "-o",
                "serve",
                "--serve-only",
                "--adapter",
                "adapter",
                "--bio-prompt-tokens",
                "150",
            ]
        )
        == 0
    )  # the tiny model's context is 256
    readme = (tmp_path / "serve" / "README-serve.md").read_text()
    assert f"trtllm-serve {merged} --host 0.0.0.0 --port 8000 " in readme
    assert f"trtllm-serve {smollm2} --host 0.0.0.0 --port 8000 --extra_llm_api_options" in readme
    assert "trtllm-serve smollm2" not in readme and "trtllm-serve merged" not in readme
    assert f"--model merged --endpoint completions --tokenizer {merged}" in readme  # served under its folder name
    assert read_manifest(str(tmp_path / "serve"))["model_path"] == str(merged)


def test_qlora_paper_config_dry_run_prints_the_plan_without_gpu_or_weights(llama13b, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv(data, "--model", str(llama13b), "--output_dir", str(out), "--device", "cpu", "--dry-run")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and plan["model_dir"] == str(llama13b) and not out.exists()
    assert "CUDA GPU" in plan["not_run"] and "loss" not in plan  # no weights exist, none were read
    assert plan["precision"] == "bf16" and plan["effective_batch_size"] == 16 and plan["samples"] == 16
    batches = math.ceil(plan["rows"] / 4)  # packing: the 16 samples share 2048-token rows
    assert plan["optimizer_steps"] == 3 * plan["optimizer_steps_per_epoch"] == 3 * math.ceil(batches / 4)
    assert plan["parameters"] == 13_015_864_320  # Llama-2-13b
    per_layer = 4 * 32 * (5120 + 5120) + 3 * 32 * (5120 + 13824)  # r 32 on q, k, v, o, gate, up, down; no lm_head
    assert plan["trainable_parameters"] == 40 * per_layer
    memory = plan["estimated_memory_gib"]
    assert 6 < memory["weights"] < 9 and memory["lora_and_optimizer"] == pytest.approx(
        40 * per_layer * 16 / 2**30, abs=0.01
    )
    assert memory["total"] == pytest.approx(sum(v for k, v in memory.items() if k != "total"), abs=0.02)


def test_qlora_run_without_cuda_fails_at_once_naming_what_is_missing(tmp_path):
    config = load_config(
        QLORA,
        model=str(tmp_path / "absent-model"),
        train_data=[str(tmp_path / "absent.jsonl")],
        output_dir=str(tmp_path / "run"),
        device="cpu",
    )
    with pytest.raises(ValueError, match=r"load_in_4bit \(QLoRA\) needs a CUDA GPU") as err:
        train(config)  # neither the data nor the model folder is read first
    assert "a CUDA GPU (device here: cpu)" in str(err.value)
    assert ("pip install 'bioserc[qlora]'" in str(err.value)) == (importlib.util.find_spec("bitsandbytes") is None)
    assert not (tmp_path / "run").exists()


def test_a_hub_id_is_refused_before_anything_is_fetched(data, tmp_path):
    config = load_config(
        str(CONFIGS / "meld_llama2_7b_lora_paper.yaml"),
        model="meta-llama/Llama-2-7b-hf",
        output_dir=str(tmp_path),
        device="cpu",
        **data,
    )
    with pytest.raises(FileNotFoundError, match="'meta-llama/Llama-2-7b-hf' is neither an embedded model.*never"):
        train(config, dry_run=True)


def test_threads_reach_torch(llama13b, data, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert (
            main(
                argv(
                    data,
                    "--model",
                    str(llama13b),
                    "--output_dir",
                    str(tmp_path),
                    "--device",
                    "cpu",
                    "--threads",
                    str(before + 1),
                    "--dry-run",
                )
            )
            == 0
        )
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
    assert load_config(QLORA).threads == 0  # 0: torch's own choice, left alone
