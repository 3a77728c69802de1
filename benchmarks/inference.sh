#!/usr/bin/env bash
# Inference benchmarks of benchmarks/README.md: hdn bench on MovieLens-100K, on MovieLens-1M at
# both gamma settings and on a synthetic catalogue of the MovieLens-20M shape, one thread each.
# Models are trained briefly, because only the rejection shares matter for speed, and are
# reused when they already exist under $HDN_BENCH_RUNS (default runs/bench). Each bench copies
# report.json, stages.png and the printed tables (bench.txt) to benchmarks/results/inference/NAME.
#
# Usage: benchmarks/inference.sh [NAME ...]   names: ml100k ml1m-g1 ml1m-g2 ml20m (default all)
# Run it on an otherwise idle machine: the figures are wall-clock times.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup_env.sh"
cd "$repo"
runs="${HDN_BENCH_RUNS:-runs/bench}"
results=benchmarks/results/inference
mkdir -p "$runs" "$results"

train_and_export() {
    # train_and_export NAME DATA GAMMAS EPOCH-OPTIONS...
    local name=$1 data=$2 gammas=$3
    shift 3
    if [[ ! -f "$runs/$name/run/manifest.json" ]]; then
        hdn train --data "$data" --out "$runs/$name/run" --overwrite --threads 1 -q \
            --gammas "$gammas" "$@"
    fi
    if [[ ! -f "$runs/$name/model/manifest.json" ]]; then
        hdn export "$runs/$name/run" --format onnx --out "$runs/$name/model" --overwrite -q
    fi
}

bench() {
    # bench NAME BENCH-OPTIONS...: exported teachers and synthetic models stay under $runs.
    local name=$1
    shift
    mkdir -p "$results/$name"
    hdn bench "$@" --threads 1 --out "$runs/$name/bench" -q | tee "$results/$name/bench.txt"
    cp "$runs/$name/bench/report.json" "$runs/$name/bench/stages.png" "$results/$name/"
}

ml1m_epochs=(--mf-epochs 2 --pretrain-epochs 1 --teacher-epochs 2 --student-epochs 5)
for name in "${@:-ml100k ml1m-g1 ml1m-g2 ml20m}"; do
    for name in $name; do
        case "$name" in
        ml100k)
            train_and_export ml100k ml-100k 0.5,0.75,0.875 --mf-epochs 2 --pretrain-epochs 1 \
                --teacher-epochs 2 --student-epochs 8
            bench ml100k "$runs/ml100k/model" --random-teacher convncf
            ;;
        ml1m-g1)
            train_and_export ml1m-g1 ml-1m 0.5,0.75,0.875 "${ml1m_epochs[@]}"
            bench ml1m-g1 "$runs/ml1m-g1/model" --random-teacher convncf --time-limit 60
            ;;
        ml1m-g2)
            train_and_export ml1m-g2 ml-1m 0.75,0.875,0.9375 "${ml1m_epochs[@]}"
            bench ml1m-g2 "$runs/ml1m-g2/model" --random-teacher convncf --time-limit 60
            ;;
        ml20m)
            bench ml20m --synthetic 138493x26744 --repeats 2 --time-limit 300
            ;;
        *)
            echo "Unknown benchmark '$name'. Choose from: ml100k ml1m-g1 ml1m-g2 ml20m." >&2
            exit 2
            ;;
        esac
    done
done
