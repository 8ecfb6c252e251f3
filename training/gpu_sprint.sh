#!/bin/sh
# One GPU sprint (docs/training.md "A GPU sprint"): runs ON the `device` tool's machine, in the repository root,
# after training/sprint_bundle.sh packed wheels and data into .sprint/1, .sprint/2, ... here and one call per part
# carried them there. Trains from weights/default.pt for MINUTES of wall clock (the schedule ends on time:
# --time-limit-min) with every core but one generating samples, and leaves model.pt, model_ema.pt, log.csv,
# config.json and curves.png in $OUT (a lite checkpoint is 9.8 MB; a file over the tool's 16 MiB comes back in
# parts). Score them here before shipping anything. Settings: MINUTES, BATCH, LR, SEED, INIT, GROW, WORKERS,
# GRACE_S, RETURN, TRACE_STEPS (profile.txt: where a step's time goes, training.trace), DECAY_FROM (the nominal
# step the cosine starts at, of 100,000: 30,000 = after 30 % of the time; 100000 = lr held to the end), EXTRA
# (more `python -m training` arguments), CLICK_THREADS (--click-threads), RESUME=1 (a later call on the same warm machine: continue the run the
# last call left in /tmp/sprint-run for MINUTES more, setup skipped; its lr schedule starts over on the new
# clock, so hold the lr in the first call with DECAY_FROM=100000 and let the resumed call decay it).
# The first sprint (2026-12-04): OUT=$OUT MINUTES=8 GRACE_S=40 BATCH=24 LR=1e-3 sh training/gpu_sprint.sh
# Local dry run: DEVICE=cpu WORKERS=1 BATCH=2 MINUTES=0.5 SKIP_INSTALL=1 OUT=/tmp/sprint sh training/gpu_sprint.sh
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder the results go to}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-16}
LR=${LR:-5e-4}
INIT=${INIT:-weights/default.pt}
GROW=${GROW:-}   # e.g. lite-xl: train INIT grown into that profile (training.grow), a capacity test
RETURN=${RETURN:-model.pt model_ema.pt log.csv config.json curves.png profile.txt}   # at most 8 files come back, parts included
WORKERS=${WORKERS:-$(($(nproc) - 1))}
if [ -n "${RESUME:-}" ]; then TRACE_STEPS=${TRACE_STEPS:-0}; else TRACE_STEPS=${TRACE_STEPS:-10}; fi
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
t0=$(date +%s)
if [ ! -d data/train ]; then
    cat .sprint/[1-9]/part* | tar -xf -   # data/train data/labelmaps data/images .sprint/whl (parts in order)
fi
if [ -n "${RESUME:-}" ]; then
    [ -f /tmp/sprint-run/last.pt ] || { echo "RESUME=1: no /tmp/sprint-run/last.pt on this machine (a fresh one?)" >&2; exit 2; }
    if [ -z "${SKIP_INSTALL:-}" ]; then export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}; fi
elif [ -z "${SKIP_INSTALL:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .sprint/whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
$PY -m training.pseudo --jobs "$(nproc)" --data data/train data/images --out .cache/pseudo
df -h /dev/shm | tail -1   # training.data.loader_uses_shm: batches travel in shared memory where it has room
if [ -n "$GROW" ] && [ -z "${RESUME:-}" ]; then
    $PY -m training.grow --from "$INIT" --profile "$GROW" --out /tmp/grown.pt
    INIT=/tmp/grown.pt
fi
echo "setup took $(($(date +%s) - t0)) s; training for $MINUTES min"
run=/tmp/sprint-run
[ -n "${RESUME:-}" ] || rm -rf "$run"
mkdir -p "$OUT"
# whatever the run saved last (every 250 steps, and at the end) comes back even if it fails or overruns; a file
# over the tool's 16 MiB comes back in 15 MiB parts (join them with cat)
copy_out() {
    for f in $RETURN; do
        [ -f "$run/$f" ] || continue
        if [ "$(stat -c %s "$run/$f")" -gt 15728640 ]; then split -b 15M -d "$run/$f" "$OUT/$f.part"; else cp "$run/$f" "$OUT/"; fi
    done
    ls -la "$OUT"
}
trap copy_out EXIT
# the nominal 100,000 steps only set the schedule's shape: lr held for 30 % of the time, cosine to 1e-5 at the end
# a hard stop GRACE_S (90) s after the schedule's end, so that the checkpoints come back inside the device call's limit
timeout -s INT $(awk "BEGIN{print int($MINUTES * 60 + ${GRACE_S:-90})}") $PY -m training --data data/train --labelmaps data/labelmaps --pseudo .cache/pseudo --profile lite --out "$run" \
    --init "$INIT" --device "$DEVICE" --threads 2 --batch-size "$BATCH" --num-workers "$WORKERS" --lr "$LR" --warmup-steps 100 \
    --schedule cosine --steps 100000 --decay-from "${DECAY_FROM:-30000}" --min-lr 1e-5 --time-limit-min "$MINUTES" --flip \
    --p-refine 0.1 --click-rounds-max 5 --ema 0.999 --seed "${SEED:-11}" --ckpt-every 250 --log-every 20 --no-progress \
    --trace-steps "$TRACE_STEPS" --click-threads "${CLICK_THREADS:-1}" ${RESUME:+--resume} ${EXTRA:-}
echo "sprint done in $(($(date +%s) - t0)) s"
