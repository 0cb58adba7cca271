#!/usr/bin/env bash
# Generate bios for MELD and EmoryNLP train + valid with the embedded SmolLM2 (greedy, bio-v1), resumably.
# Runs on ONNX Runtime: on this 2-core CPU it gave the same bios as PyTorch 1.84x faster (docs/BENCHMARKS.md).
#   nohup bash bench/generate_bios.sh > runs/generate_bios.log 2>&1 &
# The cache data/bios/cache/ (JSONL shards, committed) makes a rerun skip every bio already written, so a killed run
# loses at most the batch in flight. Finished splits are compressed to data/bios/<dataset>.<split>.*.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
RAW="${RAW:-../shared/data/raw}"
BIOSERC="${BIOSERC:-.venv/bin/bioserc}"
CACHE="${BIOSERC_CACHE:-$HOME/.cache/bioserc}"
ONNX="$CACHE/smollm2-135m-instruct-onnx"
"$BIOSERC" models pull smollm2
if [ ! -f "$ONNX/model.onnx" ]; then
  "$(dirname "$BIOSERC")/optimum-cli" export onnx --task text-generation-with-past \
    --model "$CACHE/smollm2-135m-instruct" "$ONNX"
fi
for split in meld/meld.valid meld/meld.train emorynlp/emorynlp.valid emorynlp/emorynlp.train; do
  name=$(basename "$split")
  out="runs/bios/$name"
  start=$(date +%s)
  "$BIOSERC" bios "$RAW/$split.json" -o "$out" --cache data/bios/cache --batch-size 16 \
    --backend onnx --model "$ONNX"
  echo "$name: $(( $(date +%s) - start )) s wall" | tee -a data/bios/wall_times.txt
  gzip -9 -c "$out/bios.jsonl" > "data/bios/$name.bios.jsonl.gz"
  gzip -9 -c "$out/bios.paper.json" > "data/bios/$name.bios.paper.json.gz"
  gzip -9 -c "$out/dead_letter.jsonl" > "data/bios/$name.dead_letter.jsonl.gz"
done
