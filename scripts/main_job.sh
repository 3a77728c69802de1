#!/usr/bin/env bash
# The main job on MovieLens-100K: train PopRank, MF, the NeuMF teacher and the HDN student with
# N = 3, d = 32, gammas 0.5/0.75/0.875, 5 negatives, Adam 0.001 and batch 512 (the settings of
# the HDN experiments) but fewer epochs, then evaluate, export to ONNX and recommend.
# Outputs go to $HDN_OUT (default runs/ml-100k); an earlier output there is replaced.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$repo"
out="${HDN_OUT:-runs/ml-100k}"

hdn train --data ml-100k --out "$out/run" --overwrite --threads 2 \
    --mf-epochs 10 --pretrain-epochs 3 --teacher-epochs 3 --student-epochs 20
hdn evaluate "$out/run"
hdn export "$out/run" --format onnx --out "$out/model" --overwrite
hdn recommend "$out/model" --user 1 --user 42 --k 10
