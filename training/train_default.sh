#!/bin/sh
# Reproduce weights/default.pt from scratch on a CPU (see weights/README.md for the run that produced it).
# Needs data/train from `make data`. Resumable: run it again after an interruption and it continues.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=${RUN:-runs/default}
STEPS=${STEPS:-1400}
resume=""
[ -f "$RUN/last.pt" ] && resume="--resume"
$PY -m training --data data/train --profile lite --out "$RUN" --steps "$STEPS" --batch-size 2 \
    --lr 2e-3 --schedule cosine --warmup-steps 50 --min-lr 2e-5 --flip --threads 2 \
    --ckpt-every 50 --log-every 10 --seed 0 $resume
$PY - "$RUN/model.pt" weights/default.pt <<'PYEOF'
import sys
from inference.network import load_model, save_checkpoint
save_checkpoint(load_model(sys.argv[1]), sys.argv[2])
print("wrote", sys.argv[2])
PYEOF
