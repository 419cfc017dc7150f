#!/usr/bin/env bash
# The GPU path, end to end on a CUDA machine without internet (at most 10 minutes: the steps' time
# limits add up to that): install tinyscale from this checkout into the current Python, with the torch already
# there; run the tests that need CUDA (bf16 autocast training, DDP with NCCL on every visible GPU,
# torch.compile); then train the TinyStories-paper sizes (1M-33M) for a fixed number of tokens each and
# print tokens/s and MFU per size against nanoGPT's train.py (bench/gpu_check.py).
#
#   bench/gpu_check.sh [NANOGPT_DIR]        # or NANOGPT_DIR=...; without one, nanoGPT is skipped
#   DRY_RUN=1 bench/gpu_check.sh            # print the steps only
#   WHEELS=DIR bench/gpu_check.sh           # install missing dependencies from wheels in DIR (pip download)
#
# PYTHON picks the interpreter (default: python3). Each step has a time limit, so a hung step cannot take
# the whole budget. Extra arguments after NANOGPT_DIR go to gpu_check.py (e.g. --sizes 1M,33M).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NANO=${1:-${NANOGPT_DIR:-}}
shift $(( $# > 0 ? 1 : 0 ))

step() {  # step SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    echo "== $what (limit ${limit}s): $*"
    if [ -n "${DRY_RUN:-}" ]; then return 0; fi
    local t=$SECONDS
    timeout "$limit" "$@"
    echo "== $what: $((SECONDS - t)) s"
}

if [ -z "${DRY_RUN:-}" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)); nothing to check" >&2
    exit 2
fi
FIND=()
if [ -n "${WHEELS:-}" ]; then FIND=(--find-links "$WHEELS"); fi
# --no-index: no internet there; --no-build-isolation: build with the setuptools already installed. The
# torch already installed satisfies the dependency, so pip keeps the user's CUDA build.
# The limits add up to 10 minutes, the whole budget; the steps are planned at ~0.5, ~1.5 and ~4 minutes.
step 120 "install" "$PY" -m pip install --no-index --no-build-isolation "${FIND[@]}" -e .
if [ -z "${DRY_RUN:-}" ] && ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "gpu_check: pytest is missing (pip download pytest into WHEELS elsewhere); skipping the CUDA tests" >&2
else
    step 180 "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_cuda.py
fi
step 300 "speed against nanoGPT" "$PY" bench/gpu_check.py --device cuda ${NANO:+--nanogpt "$NANO"} "$@"
