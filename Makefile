# Interactive 3D segmentation (CVPR 2025 challenge contract). `make help` lists the targets.
PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
IMAGE       ?= segfm3d
ENGINE      ?= docker
TORCH_INDEX ?= $(TORCH_CPU_INDEX)
WEIGHTS     ?= weights/default.pt
CASES       ?= data/heldout
OUT         ?= eval_out
EXTRA_DATA  ?=
HOST        ?= 127.0.0.1
PORT        ?= 1527
# predict.sh runs `python3` from PATH: the venv's comes first for every target.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help install test demo eval bench serve data samples train-default docker image-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements-serve.txt requirements-dev.txt
	$(PYTHON_BOOT) -m venv $(VENV)
	@# CPU build of torch: `+cpu` matches only a local CPU wheel (PyPI hosts no local versions, so this never
	@# pulls a CUDA build) with its dependencies from the configured indexes; else from PyTorch's CPU index.
	$(PY) -m pip install torch==2.13.0+cpu || $(PY) -m pip install --index-url $(TORCH_CPU_INDEX) torch==2.13.0
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	@# the older nnInteractive client, beside the venv, for tests/test_serve.py's 2.5.0 compatibility test
	$(PY) -m pip install --no-deps --target .cache/nninteractive-client-2.5.0 nninteractive-client==2.5.0
	touch $@

install: $(VENV)/.installed  ## create .venv with the CPU torch build and everything else

test: $(VENV)/.installed  ## run the test suite
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed  ## predict.sh over the sample cases: box + 5 clicks, table, plot and slice PNGs in demo_out/
	$(PY) -m evaluation.demo --cases samples --out demo_out --weights $(WEIGHTS)

eval: $(VENV)/.installed  ## score predict.sh (subprocess, as the organizer) and the baselines on CASES (default data/heldout)
	@test -d $(CASES) || { echo "no $(CASES): run 'make data' first (or CASES=samples)"; exit 2; }
	SEGFM_WEIGHTS=$(abspath $(WEIGHTS)) $(PY) -m evaluation --cases $(CASES) --out $(OUT) --command "sh predict.sh" --workdir . --both-box-modes --baselines

bench: $(VENV)/.installed  ## inference, interactive latency, evaluation and training timings on this machine
	$(PY) -m inference.bench
	$(PY) -m inference.latency --checkpoint $(WEIGHTS)
	$(PY) -m evaluation.bench
	$(PY) -m training.bench

serve: $(VENV)/.installed  ## nnInteractive-compatible server for napari / 3D Slicer (HOST, PORT, WEIGHTS; key from env NN_INTERACTIVE_API_KEY)
	$(PY) -m inference.serve --host $(HOST) --port $(PORT) --checkpoint $(WEIGHTS)

data: $(VENV)/.installed  ## fetch + convert every permitted volume into data/{train,heldout,labelmaps,images} (EXTRA_DATA=dir: the shared data, docs/data.md)
	$(PY) -m training.prepare_data --out data $(if $(EXTRA_DATA),--extra-data $(EXTRA_DATA))

samples: $(VENV)/.installed  ## regenerate the committed sample cases in samples/
	$(PY) -m training.prepare_data --samples samples --samples-only

train-default: $(VENV)/.installed data  ## reproduce weights/default.pt from scratch (CPU, see weights/README.md)
	sh training/train_default.sh

docker:  ## build the image (ENGINE=docker, or podman), squash it when docker-squash is installed, save $(IMAGE).tar.gz
	$(ENGINE) build -t $(IMAGE):latest --build-arg TORCH_INDEX=$(TORCH_INDEX) .
	if command -v docker-squash >/dev/null 2>&1; then docker-squash -t $(IMAGE):latest $(IMAGE):latest; fi
	$(ENGINE) save -o $(IMAGE).tar $(IMAGE):latest && gzip -f $(IMAGE).tar

image-check: $(VENV)/.installed  ## build the image (podman; offline stand-in base if needed), run it as the organizer over samples/ (box + 1 click step), compare with predict.sh here
	$(PY) -m evaluation.image_check --cases samples --image $(IMAGE):latest --out build/image_check

clean:  ## remove outputs (keeps .venv and data/)
	rm -rf demo_out eval_out bench_out .pytest_cache
