#!/usr/bin/env bash
# Create .venv beside the repository (once) and install hdn with the CPU runtime, training and
# test dependencies. Sourced by main_job.sh and test.sh; safe to run again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HDN_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# torch is pinned for installation only: 2.13.0 is the CPU build these machines provide. The
# package itself accepts any torch >= 2.2.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0"
fi
if ! "$venv/bin/python" -c "import hdn_train, onnxruntime, torchmetrics, typer" 2>/dev/null \
    || [ "$repo/pyproject.toml" -nt "$venv/.hdn-installed" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -e "$repo[cpu,dev]"
    touch "$venv/.hdn-installed"
fi

# Data sets resolve in HDN_DATA_HOME. A ../shared/data folder beside the repository contains
# MovieLens already, so pointing there saves the download.
if [ -z "${HDN_DATA_HOME:-}" ] && [ -d "$repo/../shared/data" ]; then
    export HDN_DATA_HOME="$(cd "$repo/../shared/data" && pwd)"
fi
# glibc returns buffers above its mmap threshold (at most 32 MiB by default) to the kernel on
# every free, and ConvNCF's per-batch activations are just above it, so each training step paid
# for fresh pages. Raising both thresholds made ConvNCF's BPR steps 2.5-3x faster on a 2-core
# x86_64 machine (benchmarks/convncf_epoch_time.py).
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-4294967296}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-4294967296}"
export PATH="$venv/bin:$PATH"
