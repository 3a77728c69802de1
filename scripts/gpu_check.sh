#!/usr/bin/env bash
# Check hdn's GPU backends end to end on a machine with an NVIDIA GPU; it also runs on a CPU-only
# machine and then reports the GPU backends as unavailable.
#
# Run from the repository root: scripts/gpu_check.sh. It
# - reports the GPU, driver, CUDA, TensorRT, ONNX Runtime and torch versions,
# - trains a small HDN on MovieLens-100K, or on synthetic data when that is not in the data home,
# - exports it to ONNX, and to TensorRT engines (fp32 and fp16) where TensorRT runs,
# - runs `hdn verify` for every backend the machine can run,
# - recommends and times top-20 for all users through each backend,
# - runs the tests marked gpu, which skip with their reason where a backend cannot run.
#
# Uses the machine's python3 (or $PYTHON, or .venv/ when present) and the repository on
# PYTHONPATH, so hdn need not be installed. torch, onnx, onnxscript and onnxruntime must be there
# already; typer, rich, safetensors and pooch are installed with pip when missing.
# Every step runs even when an earlier one failed; the summary lists what failed or was skipped,
# and why. Outputs and the full log go to $OUT (gpu_check.log), else to a new folder in /tmp.
# Exit code: 0 when every step that ran passed.
set -u

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${OUT:-$(mktemp -d /tmp/hdn-gpu-check.XXXXXX)}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1

if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
else
    python="python3"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
threads="${HDN_THREADS:-$(nproc)}"
if [ -z "${HDN_DATA_HOME:-}" ] && [ -d "$repo/../shared/data" ]; then
    export HDN_DATA_HOME="$(cd "$repo/../shared/data" && pwd)"
fi

declare -a summary=()
failures=0

# step NAME COMMAND...: run COMMAND, keep going on failure, and record the outcome.
step() {
    local name="$1"
    shift
    echo
    echo "=== $name"
    local started=$SECONDS
    if "$@"; then
        summary+=("ok       $name ($((SECONDS - started))s)")
    else
        summary+=("FAILED   $name (exit $?, $((SECONDS - started))s)")
        failures=$((failures + 1))
    fi
}

skip() {
    echo
    echo "=== $1: skipped: $2"
    summary+=("skipped  $1: $2")
}

hdn() {
    "$python" -c 'import sys; from cli.main import app; sys.argv[0] = "hdn"; app()' "$@"
}

gpu_report() {
    if ! command -v nvidia-smi >/dev/null; then
        echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
        return 0
    fi
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap \
        --format=csv,noheader || true
    nvidia-smi | grep -o "CUDA Version: [0-9.]*" || echo "CUDA Version: not reported"
}

install_missing() {
    local missing=()
    for module in typer rich safetensors pooch; do
        "$python" -c "import $module" 2>/dev/null || missing+=("$module")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "typer, rich, safetensors and pooch are installed"
        return 0
    fi
    echo "installing ${missing[*]} (never torch)"
    "$python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
}

choose_data() {
    if [ -f "${HDN_DATA_HOME:-/nonexistent}/ml-100k/u.data" ]; then
        data="ml-100k"
        echo "data: MovieLens-100K from $HDN_DATA_HOME"
    else
        data="$out/synthetic.csv"
        echo "data: MovieLens-100K not found in HDN_DATA_HOME='${HDN_DATA_HOME:-}', so a" \
            "synthetic set is used (no download is attempted)"
        "$python" scripts/gpu_check.py synthetic-data "$data"
    fi
}

environment_report() {
    "$python" scripts/gpu_check.py env >"$out/backends.txt"
    local status=$?
    cat "$out/backends.txt"
    return $status
}

available() {  # available BACKEND: whether hdn_runtime's own check passes for it
    grep -q "^backend $1: available" "$out/backends.txt"
}

reason() {
    local text
    text="$(sed -n "s/^backend $1: UNAVAILABLE: //p" "$out/backends.txt" 2>/dev/null)"
    echo "${text:-the availability check failed (see Versions and backend availability)}"
}

echo "hdn GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), repository $repo, outputs in $out"
step "GPU and driver" gpu_report
step "Python packages" install_missing
step "Versions and backend availability" environment_report
choose_data

step "Train a small HDN" hdn train --data "$data" --out "$out/run" --overwrite -q \
    --threads "$threads" --mf-epochs 1 --pretrain-epochs 1 --teacher-epochs 2 --student-epochs 5
step "Export ONNX" hdn export "$out/run" --format onnx --out "$out/model" --overwrite -q

if available tensorrt; then
    step "Export TensorRT fp32" hdn export "$out/run" --format trt --out "$out/model-trt" \
        --overwrite -q --timing-cache "$out/timing.cache"
    step "Export TensorRT fp16" hdn export "$out/run" --format trt --precision fp16 \
        --out "$out/model-trt-fp16" --overwrite -q --timing-cache "$out/timing.cache"
else
    skip "Export TensorRT" "$(reason tensorrt)"
fi

bench_models=(--model "cpu=$out/model")
step "Verify cpu" hdn verify "$out/model" --backend cpu --users 64 -q
if available cuda; then
    step "Verify cuda" hdn verify "$out/model" --backend cuda --users 64 -q
    bench_models+=(--model "cuda=$out/model")
else
    skip "Verify cuda" "$(reason cuda)"
fi
if available tensorrt && [ -d "$out/model-trt" ]; then
    step "Verify tensorrt fp32" hdn verify "$out/model-trt" --backend tensorrt --users 64 -q
    bench_models+=(--model "tensorrt=$out/model-trt")
    if [ -d "$out/model-trt-fp16" ]; then
        step "Verify tensorrt fp16" hdn verify "$out/model-trt-fp16" --backend tensorrt \
            --users 64 -q
    fi
elif available tensorrt; then
    skip "Verify tensorrt" "no engines were built (see Export TensorRT fp32 above)"
else
    skip "Verify tensorrt" "$(reason tensorrt)"
fi
auto_model="$out/model"
if [ -d "$out/model-trt" ]; then
    auto_model="$out/model-trt"
fi
step "Verify auto" hdn verify "$auto_model" --backend auto --users 16 -q

step "Recommend and benchmark" "$python" scripts/gpu_check.py bench "${bench_models[@]}" --k 20

if "$python" -c "import pytest" 2>/dev/null; then
    step "GPU tests (pytest -m gpu)" "$python" -m pytest -q -m gpu -rs -p no:cacheprovider \
        tests/hdn_export/test_tensorrt.py tests/hdn_runtime/test_backends.py
else
    skip "GPU tests (pytest -m gpu)" "pytest is not installed for $python"
fi

echo
echo "=== Summary ($SECONDS s in all; log: $out/gpu_check.log)"
printf '%s\n' "${summary[@]}"
if [ "$failures" -gt 0 ]; then
    echo "$failures step(s) failed."
    exit 1
fi
echo "Every step that ran passed."
