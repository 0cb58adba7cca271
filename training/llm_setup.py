"""Model, data and artifact helpers of `train_llm.py`: base model (+ 4-bit), LoRA, samples, collator, adapter saving,
and the dry run's parameter counts and memory estimate (from config.json alone, no weights read).

Kept apart so the training script stays a short `main`; `merge_llm.py` and the bench reuse the loaders.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bioserc.artifacts import write_manifest
from bioserc.embedded import MODELS, resolve_model
from bioserc.fsutil import replace_dir
from bioserc.models.collate import IGNORE, BioKey, load_bios, missing_bios
from bioserc.models.llm_encoding import ChatEncoder, utterance_bio
from bioserc.prompts.erc_llm import ERC_PROMPT_VERSION
from bioserc.readers import read_conversations
from bioserc.schema import Conversation
from bioserc.training.checkpoint import DEV_REPORT


logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_precision(precision: str, device: str) -> str:
    """auto: bf16 on a GPU that has it, else fp16 on CUDA; fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


CAUSAL_LMS = [name for name, spec in MODELS.items() if spec.kind == "causal-lm"]


def local_model(name_or_path: str) -> str:
    """The folder to load: an embedded model's, or a local Hugging Face folder; a Hub id is refused (never fetched)."""
    path = resolve_model(name_or_path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither an embedded model ({', '.join(CAUSAL_LMS)}) nor a local Hugging Face "
            "folder with a config.json. The Hub is never contacted: download the checkpoint once (e.g. `hf download "
            "meta-llama/Llama-2-13b-chat-hf --local-dir /models/Llama-2-13b-chat-hf`) and pass that folder"
        )
    return path


def qlora_missing(device: str) -> list[str]:
    """What this machine lacks for QLoRA (empty: nothing)."""
    missing = [] if device == "cuda" else [f"a CUDA GPU (device here: {device})"]
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes (pip install 'bioserc[qlora]')")
    return missing


def require_qlora(device: str) -> None:
    """Fail before any data or weights are read when load_in_4bit cannot run here, naming everything missing."""
    missing = qlora_missing(device)
    if missing:
        error = ImportError if device == "cuda" else ValueError
        raise error(
            f"load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes; missing here: {', '.join(missing)}. "
            "Set load_in_4bit: false to train plain LoRA instead"
        )


def base_model_ref(name_or_path: str) -> str:
    """What the manifest records: an embedded model's name, else the absolute folder (or the id as given)."""
    if name_or_path in MODELS:
        return name_or_path
    resolved = resolve_model(name_or_path)
    return os.path.abspath(resolved) if os.path.isdir(resolved) else resolved


def load_base_model(
    name_or_path: str, device: str, precision: str, attn_implementation: str = "auto", load_in_4bit: bool = False
):
    """A causal LM for LoRA training: eager attention on CPU (sdpa is much slower there, offline-models.md 2.3).

    QLoRA (`load_in_4bit`) is the paper's NF4 + double quantisation with bf16 compute; it needs CUDA and bitsandbytes.
    """
    from transformers import AutoModelForCausalLM

    if load_in_4bit:
        require_qlora(device)
    attn = attn_implementation if attn_implementation != "auto" else ("sdpa" if device == "cuda" else "eager")
    kwargs: dict[str, Any] = {"dtype": DTYPES[precision], "attn_implementation": attn, "use_safetensors": True}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=DTYPES[precision] if precision != "fp32" else torch.float32,
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), **kwargs)
    return model if load_in_4bit else model.to(device)


def add_lora(
    model,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    quantized: bool,
    gradient_checkpointing: bool,
):
    """Wrap `model` in a peft LoRA model; only the adapter weights stay trainable."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return get_peft_model(model, lora_config(r, alpha, dropout, target_modules))


def lora_config(r: int, alpha: int, dropout: float, target_modules: Sequence[str]):
    """The run's peft LoraConfig: one definition for training and the dry run's parameter count."""
    from peft import LoraConfig

    targets: str | list[str] = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=targets, task_type="CAUSAL_LM"
    )


def parameter_counts(model_dir: str, lora) -> dict[str, int]:
    """Total, 4-bit-quantisable (every Linear but the output head, as transformers' bitsandbytes path skips it) and
    LoRA-trainable parameters, from config.json on the meta device: no weights are read or allocated."""
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        head = model.get_output_embeddings()
        counts = {
            "total": sum(p.numel() for p in model.parameters()),
            "quantisable": sum(
                m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head
            ),
        }
        counts["trainable"] = sum(p.numel() for p in get_peft_model(model, lora).parameters() if p.requires_grad)
    return counts


NF4_BYTES = 4.127 / 8  # NF4 + double-quantised block constants (QLoRA paper, section 3)


def estimate_memory_gib(
    counts: Mapping[str, int],
    model_config,
    precision: str,
    load_in_4bit: bool,
    batch_tokens: int,
    gradient_checkpointing: bool,
) -> dict[str, float]:
    """A rough peak memory (GPU memory on CUDA) of one training step, to size a machine before renting it.

    Weights: NF4 for the quantisable ones under QLoRA, the rest in fp32 (prepare_model_for_kbit_training upcasts
    them), else everything in `precision`. LoRA: fp32 weight, gradient and two AdamW moments (16 bytes/parameter).
    Activations: ~34 bytes per token, layer and hidden unit at 16 bits without attention scores (sdpa/flash;
    Korthikanti et al. 2022), only each layer's input kept under gradient checkpointing, plus fp32 logits and their
    gradient. No allocator fragmentation or CUDA context (add ~1 GiB).
    """
    width = 4 if precision == "fp32" else 2
    if load_in_4bit:
        weights = counts["quantisable"] * NF4_BYTES + (counts["total"] - counts["quantisable"]) * 4
    else:
        weights = counts["total"] * width
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    layer = 17 * width * hidden * batch_tokens
    kept = layers * width * hidden * batch_tokens + layer if gradient_checkpointing else layers * layer
    parts = {
        "weights": weights,
        "lora_and_optimizer": counts["trainable"] * 16,
        "activations": kept + batch_tokens * model_config.vocab_size * 4 * 2,
    }
    return {k: round(v / 2**30, 2) for k, v in {**parts, "total": sum(parts.values())}.items()}


def class_quotas(counts: Mapping[str, int], total: int, balance: float) -> dict[str, int]:
    """How many samples of each label a `total`-sample subset takes: shares proportional to count**(1 - balance),
    so 0 keeps the corpus's mix, 1 is equal per label and 0.5 is in between (MELD train is 47% neutral, which a short
    LoRA run otherwise learns to answer always). A label with too few samples gives its rest to the others."""
    quotas, left = {}, dict(counts)
    while left:
        room = total - sum(quotas.values())
        weights = {label: n ** (1.0 - balance) for label, n in left.items()}
        scale = room / sum(weights.values())
        full = [label for label, n in left.items() if weights[label] * scale >= n]
        if not full:
            shares = {label: weights[label] * scale for label in left}
            floors = {label: int(share) for label, share in shares.items()}
            # largest remainders fill the rounding gap, ties broken by label for determinism
            rest = sorted(left, key=lambda label: (floors[label] - shares[label], label))
            for label in rest[: room - sum(floors.values())]:
                floors[label] += 1
            return {**quotas, **floors}
        for label in full:
            quotas[label] = left.pop(label)
    return quotas


def build_features(
    conversations: Sequence[Conversation],
    bios: Mapping[BioKey, str],
    encoder: ChatEncoder,
    max_samples: int = 0,
    seed: int = 42,
    class_balance: float = 0.0,
) -> tuple[list[dict[str, list[int]]], int]:
    """One training sample per labelled utterance (a seeded random subset of `max_samples` if set, its label mix
    set by `class_balance`, see `class_quotas`); returns the samples and how many were dropped for not fitting
    max_length."""
    targets = [(c, i) for c in conversations for i, u in enumerate(c.utterances) if u.label is not None]
    if max_samples and max_samples < len(targets):
        rng = random.Random(seed)
        if class_balance:
            by_label: dict[str, list[int]] = {}
            for k, (c, i) in enumerate(targets):
                by_label.setdefault(c.utterances[i].label, []).append(k)
            quotas = class_quotas({label: len(ks) for label, ks in by_label.items()}, max_samples, class_balance)
            keep = sorted(k for label in sorted(by_label) for k in rng.sample(by_label[label], quotas[label]))
        else:
            keep = sorted(rng.sample(range(len(targets)), max_samples))
        targets = [targets[k] for k in keep]
    features = [encoder.train_features(c, i, utterance_bio(bios, c, i)) for c, i in targets]
    kept = [f for f in features if f is not None]
    return kept, len(features) - len(kept)


def first_utterances(conversations, n: int):
    """Whole conversations from the start until they hold >= n utterances (context stays intact); all if n is 0."""
    out, total = [], 0
    for conv in conversations:
        if n and total >= n:
            break
        out.append(conv)
        total += len(conv.utterances)
    return out


def load_split(config, name: str) -> tuple[list[Conversation], dict[BioKey, str]]:
    """`{name}_data` read, with its bios (none for bio_mode none); no data gives ([], {})."""
    data, bios_paths = getattr(config, f"{name}_data"), getattr(config, f"{name}_bios")
    if not data:
        return [], {}
    conversations = read_conversations(data)
    if config.bio_mode == "none":
        return conversations, {}
    if not bios_paths:
        raise ValueError(f"bio_mode=prompt needs {name}_bios (bios.jsonl from `bioserc bios`); or set bio_mode: none")
    bios = load_bios(bios_paths)
    missing = missing_bios(conversations, bios)
    if missing:
        logger.warning("%s: %d speaker(s) have no bio and get an empty one, e.g. %s", name, len(missing), missing[:3])
    return conversations, bios


class PadCollator:
    """Right-pads a batch (pad id, attention 0, labels -100) and counts the real tokens it has served."""

    def __init__(self, pad_id: int):
        self.pad_id, self.tokens = pad_id, 0

    def __call__(self, features: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(features), width, dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE, dtype=torch.long),
        }
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            for key in batch:
                batch[key][b, :n] = torch.tensor(f[key], dtype=torch.long)
            self.tokens += n
        return batch


def save_adapter(
    model,
    encoder: ChatEncoder,
    directory: str,
    base_model: str,
    label_set: str,
    lora: dict,
    report: dict | None = None,
    **fields: Any,
) -> None:
    """The adapter (safetensors) + tokenizer (with its chat template) + dev report + a lora-adapter manifest."""
    tmp = f"{directory}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    encoder.tokenizer.save_pretrained(tmp)
    metrics = {}
    if report is not None:
        with open(os.path.join(tmp, DEV_REPORT), "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        metrics = {"dev_weighted_f1": report.get("weighted_f1")}
    write_manifest(
        tmp,
        "lora-adapter",
        model_family="bioserc-llm",
        base_model=base_model,
        label_set=label_set,
        labels=list(encoder.labels),
        prompt_version=ERC_PROMPT_VERSION,
        prompt=encoder.prompt.to_dict(),
        lora=lora,
        metrics=metrics,
        **fields,
    )
    replace_dir(tmp, directory)
