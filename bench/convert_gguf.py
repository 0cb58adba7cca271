"""Any GGUF causal LM -> a plain HF folder (bf16 safetensors + tokenizer) that `bioserc bios --model DIR` loads.

For trying an LLM that only a package registry carries, as a GGUF file (docs/BENCHMARKS.md, "A larger LLM"). The
embedded SmolLM2 has its own converter (`bioserc models pull smollm2`), which also fixes that model's BOS/EOS tokens;
this one keeps whatever the GGUF file's tokenizer says. Both dequantise with `bioserc.embedded.dequantised`.

    python bench/convert_gguf.py /tmp/qwen/qwen.gguf -o /tmp/qwen/hf
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def convert(gguf: Path, out: Path) -> dict:
    import torch
    from transformers import AutoTokenizer

    from bioserc.embedded import dequantised

    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = dequantised(gguf)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "architecture": type(model).__name__,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6),
        "chat_template": bool(tokenizer.chat_template),
        "eos": tokenizer.eos_token,
        "seconds": round(time.monotonic() - start, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", type=Path, help="the .gguf file")
    p.add_argument("-o", "--output", type=Path, required=True, help="the HF folder to write")
    args = p.parse_args()
    print(convert(args.gguf, args.output))


if __name__ == "__main__":
    main()
