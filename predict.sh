#!/bin/sh
# The challenge container's entry point: segment every INPUT_DIR/*.npz into OUTPUT_DIR/<same name>.npz.
# INPUT_DIR and OUTPUT_DIR default to the organizer's folders; PYTHON defaults to python3 on PATH.
SEGFM_START=$(date +%s.%N 2>/dev/null || date +%s)
export SEGFM_START
: "${INPUT_DIR:=/workspace/inputs}"
: "${OUTPUT_DIR:=/workspace/outputs}"
: "${PYTHON:=python3}"
export INPUT_DIR OUTPUT_DIR
cd "$(dirname "$0")" || exit 1
mkdir -p "$OUTPUT_DIR"
exec "$PYTHON" -m inference --input-dir "$INPUT_DIR" --output-dir "$OUTPUT_DIR" "$@"
