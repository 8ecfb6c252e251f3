#!/bin/sh
# Reproduce the recipe of weights/default.pt on a CPU (see weights/README.md for the runs that produced it).
# Needs data/ from `make data`. Resumable: run it again after an interruption and it continues; STEPS and
# DECAY_FROM may grow between runs (the learning rate holds until DECAY_FROM, then a cosine to 2e-5 at STEPS).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=${RUN:-runs/default}
PROFILE=${PROFILE:-lite}
STEPS=${STEPS:-7600}
DECAY_FROM=${DECAY_FROM:-5600}
THREADS=${THREADS:-1}   # 1 torch thread + 1 sample worker measured fastest on 2 shared cores
$PY -m training.pseudo --data data/train data/images --out .cache/pseudo   # supervoxels, once per volume
resume=""
[ -f "$RUN/last.pt" ] && resume="--resume"
$PY -m training --data data/train --labelmaps data/labelmaps --pseudo .cache/pseudo --profile "$PROFILE" \
    --out "$RUN" --steps "$STEPS" --decay-from "$DECAY_FROM" --batch-size 2 --lr 2e-3 --schedule cosine \
    --warmup-steps 100 --min-lr 2e-5 --flip --p-refine 0.1 --threads "$THREADS" --num-workers 1 \
    --ckpt-every 100 --snapshot-every 500 --log-every 20 --seed 0 $resume
$PY - "$RUN/model.pt" weights/default.pt <<'PYEOF'
import sys
from inference.network import load_model, save_checkpoint
model = load_model(sys.argv[1])
save_checkpoint(model, sys.argv[2])
print("wrote", sys.argv[2])
PYEOF
