"""Bio generation speed with the embedded SmolLM2 on this CPU (issue 12), every comparison in one process and run.

    python bench/bios_speed.py --parts prefix batch roof threads --out docs/bench/bios_speed.json

prefix   shared-prefix generation (a conversation's transcript prefilled once, its KV cache branched per speaker) vs
         every prompt prefilled on its own, alternating on chunks of --chunk conversations so load drift hits both
         alike; both must give the same bios; the tokens each computes are counted. (One prompt for all of a
         conversation's speakers was measured here too, lost, and was removed: docs/BENCHMARKS.md.)
batch    bios/s at batch sizes --batch-sizes on the same >= 64 prompts (batch 1 is one-at-a-time; batch 1 without
         prefix sharing is today's one-at-a-time path), with padding waste in prefill and decode slots.
roof     a batched matmul of the model's shape (tokens x hidden x intermediate) on this CPU: the FLOP/s the model's
         matmuls could reach, turned into tokens/s (2 FLOP per parameter per token) to compare generation against.
before   today's shared-prefix path vs the code before this work (a git revision, --before-rev: per-speaker prefill,
         transformers' `generate`, eager attention), which runs in a child process on a worktree of that revision;
         the two alternate on chunks of --chunk conversations (as `bioserc bios --conversations-per-batch`); both must
         give the same bios; --before-batch-size gives the revision its own batch size.
profiles every profile source of `bioserc bios --profile` (--profiles; scores with the MELD label words) on the same
         first --conversations conversations, alternating on chunks of --chunk conversations: seconds per
         conversation, tokens prefilled and generated per conversation, and each one's wall against text bios.
threads  the same small workloads (bios; the default classifier labelling utterances) in fresh processes, idle and
         next to a CPU-heavy competitor (a PyTorch matmul loop with its default threads, as another training would
         be), for each thread setting: the loss under load is loaded wall / idle wall.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace

from report_io import emit


DATA = "../shared/data/raw/meld/meld.valid.json"


def conversations(path: str, n: int, skip: int = 0):
    from bioserc.readers import read_conversations

    return read_conversations(path)[skip : skip + n]


def run_bios(backend, convs, config, chunk: int, **extractor) -> tuple[list, float]:
    """Results and wall of one extraction; `extractor`: BioExtractor options such as profile and labels."""
    from bioserc.bios.extract import BioExtractor

    start = time.perf_counter()
    results = list(BioExtractor(backend, config, **extractor).run(convs, chunk=chunk))
    return results, time.perf_counter() - start


PREFIX_VARIANTS = {"per-speaker prefill": False, "shared prefix": True}  # variant: the backend's share_prefix


def prefix_part(args, backend, config) -> dict:
    convs = conversations(args.data, args.conversations)
    wall, counts = Counter(), {name: Counter() for name in PREFIX_VARIANTS}
    bios: dict[str, list] = {name: [] for name in PREFIX_VARIANTS}
    for start in range(0, len(convs), args.chunk):
        for name, share in PREFIX_VARIANTS.items():
            backend.share_prefix, backend.counts = share, counts[name]
            results, w = run_bios(backend, convs[start : start + args.chunk], config, args.batch_size)
            wall[name] += w
            bios[name] += sorted((r.conversation_id, r.speaker, r.bio, r.error) for r in results)
            print(json.dumps({"chunk": start, "variant": name, "wall_s": round(w, 1)}), flush=True)
    rows = [
        {
            "variant": name,
            "bios": len(bios[name]),
            "failed": sum(b[3] is not None for b in bios[name]),
            "wall_s": round(wall[name], 1),
            "bios_per_s": round(len(bios[name]) / wall[name], 3),
            **dict(counts[name]),
        }
        for name in PREFIX_VARIANTS
    ]
    old, new = bios["per-speaker prefill"], bios["shared prefix"]
    return {
        "conversations": len(convs),
        "batch_size": args.batch_size,
        "rows": rows,
        "identical_bios": sum(a == b for a, b in zip(old, new, strict=True)),
        "bios": len(new),
        "differing": [[a, b] for a, b in zip(old, new, strict=True) if a != b][:5],
        "shared_vs_per_speaker_wall": round(wall["per-speaker prefill"] / wall["shared prefix"], 2),
    }


BEFORE = r"""
import json, sys, time
from bioserc.bios.base import GenerationConfig
from bioserc.bios.backends import make_backend
from bioserc.bios.extract import BioExtractor
from bioserc.readers import read_conversations
data, skip, n, batch, new_tokens = sys.argv[1], *map(int, sys.argv[2:])
convs = read_conversations(data)[skip:skip + n]
backend = make_backend("transformers", "smollm2", batch_size=batch)
backend.share_prefix = False  # the per-speaker prefill of before
start = time.perf_counter()
results = list(BioExtractor(backend, GenerationConfig(max_new_tokens=new_tokens)).run(convs, chunk=batch))
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "bios": sorted([r.conversation_id, r.speaker, r.bio, r.error] for r in results)}))
"""


def before_part(args, backend, config) -> dict:
    """Chunks alternate between a child process running --before-rev (its own checkout first on the path) and this
    process's shared-prefix path; the child's wall covers generation only, as this side's does."""
    import tempfile

    convs = conversations(args.data, args.conversations)
    root = tempfile.mkdtemp(prefix="bios-before-")
    tree = os.path.join(root, "tree")
    subprocess.run(["git", "worktree", "add", "--detach", tree, args.before_rev], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": tree}
    before_batch = args.before_batch_size or args.batch_size
    wall, bios = Counter(), {"before": [], "now": []}
    try:
        for start in range(0, len(convs), args.chunk):
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    BEFORE,
                    os.path.abspath(args.data),
                    str(start),
                    str(min(args.chunk, len(convs) - start)),
                    str(before_batch),
                    str(config.max_new_tokens),
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            wall["before"] += row["wall_s"]
            bios["before"] += [tuple(b) for b in row["bios"]]
            backend.share_prefix, backend.counts = True, Counter()
            results, w = run_bios(backend, convs[start : start + args.chunk], config, args.batch_size)
            wall["now"] += w
            bios["now"] += sorted((r.conversation_id, r.speaker, r.bio, r.error) for r in results)
            print(json.dumps({"chunk": start, "before_s": round(row["wall_s"], 1), "now_s": round(w, 1)}), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], check=False, capture_output=True)
    old, new = bios["before"], bios["now"]
    return {
        "before_rev": args.before_rev,
        "conversations": len(convs),
        "chunk": args.chunk,
        "batch_size": args.batch_size,
        "before_batch_size": before_batch,
        "before_wall_s": round(wall["before"], 1),
        "now_wall_s": round(wall["now"], 1),
        "before_vs_now_wall": round(wall["before"] / wall["now"], 2),
        "bios": len(new),
        "identical_bios": sum(a == b for a, b in zip(old, new, strict=True)),
        "differing": [[a, b] for a, b in zip(old, new, strict=True) if a != b][:5],
    }


def profiles_part(args, backend, config) -> dict:
    from bioserc.labels import get_label_set

    convs = conversations(args.data, args.conversations)
    labels = get_label_set("meld").labels
    wall, counts, done = Counter(), {p: Counter() for p in args.profiles}, Counter()
    backend.share_prefix = True
    for start in range(0, len(convs), args.chunk):
        for profile in args.profiles:
            backend.counts = counts[profile]
            results, w = run_bios(
                backend, convs[start : start + args.chunk], config, args.batch_size, profile=profile, labels=labels
            )
            wall[profile] += w
            done[profile] += sum(r.error is None for r in results)
            print(json.dumps({"chunk": start, "profile": profile, "wall_s": round(wall[profile], 1)}), flush=True)
    n = len(convs)
    rows = [
        {
            "profile": p,
            "profiles_made": done[p],
            "wall_s": round(wall[p], 1),
            "s_per_conversation": round(wall[p] / n, 3),
            "prefilled_tokens_per_conversation": round(counts[p]["prefilled_tokens"] / n, 1),
            "generated_tokens_per_conversation": round(counts[p]["generated_tokens"] / n, 1),
            "wall_vs_text": round(wall[p] / wall["text"], 3) if wall["text"] else None,
        }
        for p in args.profiles
    ]
    return {"conversations": n, "batch_size": args.batch_size, "rows": rows}


def batch_part(args, backend, config) -> dict:
    convs, prompts = [], 0
    for conv in conversations(args.data, 400, skip=args.conversations):
        if prompts >= args.prompts:
            break
        convs.append(conv)
        prompts += len(conv.speakers)
    rows, reference = [], None
    for size, share in [(1, False)] + [(b, True) for b in args.batch_sizes]:
        backend.batch_size, backend.share_prefix, backend.counts = size, share, Counter()
        results, wall = run_bios(backend, convs, config, max(size, 1))
        texts = [r.bio for r in results]
        reference = reference or texts
        c = backend.counts
        rows.append(
            {
                "batch_size": size,
                "shared_prefix": share,
                "bios": len(results),
                "wall_s": round(wall, 1),
                "bios_per_s": round(len(results) / wall, 3),
                "generated_tokens_per_s": round(c["generated_tokens"] / wall, 1),
                "same_bios_as_one_at_a_time": sum(a == b for a, b in zip(reference, texts, strict=True)),
                "prefill_padding": round(1 - c["prefilled_tokens"] / max(c["prefill_slots"], 1), 3),
                "decode_padding": round(1 - c["generated_tokens"] / max(c["decode_slots"], 1), 3),
                **dict(c),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["bios_per_s"]
    for row in rows:
        row["vs_one_at_a_time"] = round(row["bios_per_s"] / base, 2)
    return {"conversations": len(convs), "prompts": prompts, "rows": rows}


def roof_part(model_dir: str, tokens: int = 2048, rounds: int = 5) -> dict:
    """Best of `rounds` timings of the MLP's up, gate and down matmuls for `tokens` rows."""
    import torch

    cfg = json.load(open(os.path.join(model_dir, "config.json"), encoding="utf-8"))
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    x, up, down = torch.randn(tokens, hidden), torch.randn(hidden, inter), torch.randn(inter, hidden)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(10):
            (x @ up) @ down
        best = min(best, (time.perf_counter() - start) / 10)
    flops = 2 * tokens * hidden * inter * 2
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    per_layer = hidden * hidden * 2 + hidden * (hidden // heads) * kv * 2 + 3 * hidden * inter
    params = cfg["num_hidden_layers"] * per_layer + cfg["vocab_size"] * hidden  # + the output projection
    gflops = flops / best / 1e9
    return {
        "matmul_rows": tokens,
        "gflop_per_s": round(gflops, 1),
        "params_per_token": params,
        "roof_tokens_per_s": round(gflops * 1e9 / (2 * params), 1),
        "torch_threads": torch.get_num_threads(),
    }


WORKLOAD = r"""
import json, os, sys, time
kind, threads, data = sys.argv[1], int(sys.argv[2]) or None, sys.argv[3]
from bioserc.readers import read_conversations
convs = read_conversations(data)
if kind == "bios":
    from bioserc.bios.base import GenerationConfig
    from bioserc.bios.backends import make_backend
    from bioserc.bios.extract import BioExtractor
    backend = make_backend("transformers", "smollm2", batch_size=16, threads=threads)
    start = time.perf_counter()
    n = len(list(BioExtractor(backend, GenerationConfig(max_new_tokens=48)).run(convs[:4], chunk=16)))
else:
    from dataclasses import replace
    from bioserc.artifacts import default_model_dir
    from bioserc.models.classifier import load_classifier
    model = load_classifier(default_model_dir(), threads=threads)
    convs = [replace(c, utterances=[replace(u, label=None) for u in c.utterances]) for c in convs[:40]]
    start = time.perf_counter()
    n = sum(len(p) for p in model.predict(convs, None, batch_size=8))
import torch
print(json.dumps({"n": n, "wall_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads()}))
"""

COMPETITOR = "import torch\na = torch.randn(1500, 1500)\nwhile True:\n    a @ a\n"

# name: (environment added to the workload's, threads argument); "before" is what a run got before issue 12's change
SETTINGS = {
    "before (torch default threads, OpenMP and ORT spin-waiting)": (
        {"OMP_WAIT_POLICY": "", "BIOSERC_ORT_SPIN": "1"},
        0,
    ),
    "default now (all CPUs, passive waiting, no ORT spinning)": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "one thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1),
}


def workload(kind: str, env: dict, threads: int, data: str) -> dict:
    full = {k: v for k, v in {**os.environ, **env}.items() if v != ""}
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, kind, str(threads), data],
        env=full,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def threads_part(args) -> dict:
    rows = []
    for kind in ("bios", "label"):
        for name, (env, threads) in SETTINGS.items():
            idle = workload(kind, env, threads, args.data)
            competitor = subprocess.Popen(
                [sys.executable, "-c", COMPETITOR], env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            )
            try:
                time.sleep(3)  # let it reach its steady loop
                loaded = workload(kind, env, threads, args.data)
            finally:
                competitor.kill()
                competitor.wait()
            rows.append(
                {
                    "workload": kind,
                    "setting": name,
                    "items": idle["n"],
                    "idle_s": round(idle["wall_s"], 2),
                    "loaded_s": round(loaded["wall_s"], 2),
                    "loss_under_load": round(loaded["wall_s"] / idle["wall_s"], 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"competitor": "python: torch 1500x1500 matmuls in a loop, torch's default threads", "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DATA)
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["prefix", "before", "batch", "roof", "profiles", "threads"],
        default=["prefix", "batch", "roof", "threads"],
    )
    p.add_argument("--backend", default="transformers", choices=["transformers", "onnx"])
    p.add_argument("--model", default="smollm2", help="embedded name or folder (an ONNX export for --backend onnx)")
    p.add_argument("--conversations", type=int, default=48, help="prefix part: the first N conversations")
    p.add_argument("--chunk", type=int, default=8, help="prefix part: conversations per alternation")
    p.add_argument("--batch-size", type=int, default=16, help="prefix part: prompts per generate call")
    p.add_argument("--prompts", type=int, default=64, help="batch part: at least this many prompts")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    p.add_argument(
        "--profiles",
        nargs="+",
        default=["text", "emotion", "scores", "latent"],
        help="profiles part: the sources to compare (text first: the others' wall is against it)",
    )
    p.add_argument("--max-new-tokens", type=int, default=96, help="as `bioserc bios` (its default)")
    p.add_argument("--before-rev", default="9d05741", help="before part: the git revision to compare against")
    p.add_argument(
        "--before-batch-size",
        type=int,
        default=0,
        help="before part: the revision's prompts per generate call (0: --batch-size); each side at its "
        "own `bioserc bios` default is --batch-size 32 --before-batch-size 16 --chunk 16",
    )
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args()

    from bioserc.bios.backends import make_backend
    from bioserc.bios.base import GenerationConfig
    from bioserc.embedded import resolve_model

    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    report: dict = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "backend": args.backend,
        "config": config.to_dict(),
    }
    backend = None
    if {"prefix", "before", "batch", "profiles"} & set(args.parts):
        backend = make_backend(args.backend, args.model, batch_size=args.batch_size)
    if "prefix" in args.parts:
        report["prefix"] = prefix_part(args, backend, config)
    if "before" in args.parts:
        report["before"] = before_part(args, backend, config)
    if "profiles" in args.parts:
        report["profiles"] = profiles_part(args, backend, config)
    if "batch" in args.parts:
        report["batch"] = batch_part(args, backend, replace(config))
    if "roof" in args.parts:
        report["roof"] = roof_part(resolve_model("smollm2"))
        best = max((r for r in report.get("batch", {}).get("rows", [])), key=lambda r: r["bios_per_s"], default=None)
        if best:
            tokens = best["prefilled_tokens"] + best["generated_tokens"]
            report["roof"]["best_batch"] = best["batch_size"]
            report["roof"]["generated_fraction_of_roof"] = round(
                best["generated_tokens_per_s"] / report["roof"]["roof_tokens_per_s"], 4
            )
            report["roof"]["all_tokens_fraction_of_roof"] = round(
                tokens / best["wall_s"] / report["roof"]["roof_tokens_per_s"], 4
            )
    if "threads" in args.parts:
        report["threads"] = threads_part(args)
    report["loadavg_after"] = os.getloadavg()
    emit(report, args.out)


if __name__ == "__main__":
    main()
