#!/usr/bin/env bash
# Generate speaker profiles for MELD and EmoryNLP (or IEMOCAP, via SPLITS) train + valid with the embedded SmolLM2, resumably.
#   nohup bash bench/generate_bios.sh > runs/generate_bios.log 2>&1 &                  # text bios (bio-v1)
#   PROFILE=scores nohup bash bench/generate_bios.sh > runs/generate_scores.log 2>&1 &  # scores-v1 vectors
#   PROFILE=scores SPLITS="meld/meld.valid meld/meld.train" bash bench/generate_bios.sh          # some splits only
#   THREADS=1 PROFILE=scores SPLITS="iemocap/iemocap.valid iemocap/iemocap.train" bash bench/generate_bios.sh
#   (THREADS: the LLM's CPU threads, e.g. 1 beside a training run; default automatic)
# PROFILE is any `bioserc bios --profile` (text, emotion, scores, latent). Text bios run on ONNX Runtime (the same
# bios as PyTorch, 1.84x faster here: docs/BENCHMARKS.md); the other profiles on BACKEND (default transformers, the
# only one that gives latent's hidden states). The cache (data/bios/cache/ for text, data/profiles/cache/ otherwise;
# JSONL shards) makes a rerun skip every profile already written, so a killed run loses at most the batch in flight.
# Finished splits are compressed to data/bios/<dataset>.<split>.*.gz (text) or
# data/profiles/<dataset>.<split>.<profile>.*.gz; each split's wall time is appended to <that folder>/wall_times.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
RAW="${RAW:-../shared/data/raw}"
BIOSERC="${BIOSERC:-.venv/bin/bioserc}"
CACHE="${BIOSERC_CACHE:-$HOME/.cache/bioserc}"
PROFILE="${PROFILE:-text}"
ONNX="$CACHE/smollm2-135m-instruct-onnx"
"$BIOSERC" models pull smollm2
if [ "$PROFILE" = text ]; then
  dest=data/bios suffix=bios dead=dead_letter backend=(--backend onnx --model "$ONNX")
  if [ ! -f "$ONNX/model.onnx" ]; then
    "$(dirname "$BIOSERC")/optimum-cli" export onnx --task text-generation-with-past \
      --model "$CACHE/smollm2-135m-instruct" "$ONNX"
  fi
else
  dest=data/profiles suffix="$PROFILE" dead="$PROFILE.dead_letter" backend=(--backend "${BACKEND:-transformers}")
fi
for split in ${SPLITS:-meld/meld.valid meld/meld.train emorynlp/emorynlp.valid emorynlp/emorynlp.train}; do
  name=$(basename "$split")
  out="runs/$suffix/$name"
  start=$(date +%s)
  "$BIOSERC" bios "$RAW/$split.json" -o "$out" --cache "$dest/cache" --batch-size 16 --profile "$PROFILE" \
    --dataset "${name%%.*}" "${backend[@]}" ${THREADS:+--threads "$THREADS"}
  echo "$name $PROFILE: $(( $(date +%s) - start )) s wall" | tee -a "$dest/wall_times.txt"
  gzip -9 -c "$out/bios.jsonl" > "$dest/$name.$suffix.jsonl.gz"
  gzip -9 -c "$out/bios.paper.json" > "$dest/$name.$suffix.paper.json.gz"
  gzip -9 -c "$out/dead_letter.jsonl" > "$dest/$name.$dead.jsonl.gz"
done
