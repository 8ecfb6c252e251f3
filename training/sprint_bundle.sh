#!/bin/sh
# Pack what a GPU sprint needs (training/gpu_sprint.sh; docs/training.md "A GPU sprint") into carries of the
# `device` tool, each under its 64 MiB per call with the tracked files: the wheels that the device machine's
# Python 3.12 lacks (versions pinned in requirements*.txt) and data/{train,labelmaps,images} from `make data`.
# Writes .sprint/1/part00, .sprint/2/part01, ... (git-ignored): one tar, split into as many parts as the room
# beside the tracked files needs (LIMIT_MIB, default 62, per call), one call carrying each.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PACKAGES="dynamic-network-architectures cornucopia torch-interpol torch-distmap connected-components-3d edt nibabel"
for d in data/train data/labelmaps data/images; do [ -d "$d" ] || { echo "$d missing: run make data" >&2; exit 1; }; done
pins=""
for p in $PACKAGES; do
    pin=$(grep -h "^$p==" requirements*.txt | head -1)
    [ -n "$pin" ] || { echo "no pinned version of $p in requirements*.txt" >&2; exit 1; }
    pins="$pins $pin"
done
rm -rf .sprint && mkdir -p .sprint/whl
plat=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    plat="$plat --platform $p"
done
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .sprint/whl $pins
tar -cf .sprint/bundle.tar data/train data/labelmaps data/images .sprint/whl
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
room=$(( ${LIMIT_MIB:-62} * 1048576 - tracked ))
[ "$room" -gt 1048576 ] || { echo "the tracked files ($((tracked / 1048576)) MiB) leave no room to carry" >&2; exit 1; }
size=$(stat -c %s .sprint/bundle.tar)
parts=$(( (size + room - 1) / room ))
[ "$parts" -le 9 ] || { echo "$parts parts: more than 9 calls to carry them" >&2; exit 1; }
split -n "$parts" -d -a 2 .sprint/bundle.tar .sprint/part
i=0
for part in .sprint/part*; do
    i=$((i + 1)); mkdir -p ".sprint/$i" && mv "$part" ".sprint/$i/"
done
rm -rf .sprint/bundle.tar .sprint/whl
for d in .sprint/[1-9]; do
    n=$(du -sb "$d" | cut -f1)
    echo "$d: $((n / 1048576)) MiB + tracked files $((tracked / 1048576)) MiB (limit 64 MiB per call)"
done
