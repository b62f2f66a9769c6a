#!/usr/bin/env bash
# fast-plaid in its own virtualenv (it pins torch 2.11 and pulls ~5 GB of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FASTPLAID_VENV:-bench/.venv-fastplaid}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q fast-plaid pyarrow numpy
echo "$VENV"
