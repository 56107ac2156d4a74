# img2imgd — `make run` starts the daemon, `make test` runs the suite; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the project so pip never picks a build by itself: 2.13.0 is the
# CPU build on machines that carry it locally and the CUDA build from PyPI elsewhere. Extra
# pip options go in TORCH_PIP_ARGS (e.g. an index URL for CPU-only wheels).
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# Extras to install: `make test EXTRAS=dev,ray` adds Ray (executor: ray) and its tests.
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv run once check-config test test-slow test-real lint typecheck check bench bench-detail bench-media bench-temporal bench-prompts bench-ray bench-gpu soak clean help

help:
	@echo "make run      set up .venv and start the daemon on ./inbox with ./profiles"
	@echo "make once     process what is in ./inbox now, then exit"
	@echo "make test     set up .venv and run the test suite (offline, CPU, about 9 minutes on 2 cores)"
	@echo "make test-slow  the long tests (a 1000-file burst and its kind), left out of make test"
	@echo "make test-real  full-size random SD 1.5, SD 2.1-v, SDXL (file and folder), LoRA, VAE, ControlNet"
	@echo "               through img2imgd once offline, and memory against plain diffusers;"
	@echo "               a full-width FLUX.1-dev file in BFL's layout (1+1 blocks, 1 GB, and fp8)"
	@echo "               (builds ~19 GB once into state/real-models or IMG2IMGD_REAL_MODELS; SDXL needs 20 GB RAM free)"
	@echo "make check    ruff, mypy and the tests"
	@echo "make bench    img2imgd once vs a plain diffusers script, whole processes, and where the time goes"
	@echo "make bench-detail  the daemon's time per image on a warm pipeline, and drop-to-start latency"
	@echo "make bench-media  interrogation, clips and videos: the daemon's cost per image or frame"
	@echo "make bench-temporal  flicker: warp error of a known-motion clip per temporal: method"
	@echo "               (a tiny model trained here for 4 CPU minutes the first time, then cached)"
	@echo "make bench-prompts  prompt editing, alternation and AND: time and encoder calls"
	@echo "make bench-ray  executor: ray, 16 frames on one worker then two (a local Ray cluster)"
	@echo "make bench-gpu  on a CUDA GPU: full-size random SD 1.5, SDXL and FLUX.1-dev, img2imgd once vs a plain script"
	@echo "               (BENCH_GPU_ARGS=--quick: SD 1.5 only, 8 images); without CUDA it says so and stops"
	@echo "make soak     drop files for a while, killing and restarting the daemon; check nothing is lost or duplicated"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: venv
	$(BIN)/img2imgd run

once: venv
	$(BIN)/img2imgd once

check-config: venv
	$(BIN)/img2imgd check

test: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

# -s: the tests print their figures (sizes, build and load times, peak RSS, the memory table).
test-real: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m real -s -rs

lint: venv
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

typecheck: venv
	$(BIN)/mypy

check: lint typecheck test

bench: venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/whole.py

bench-detail: venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench.py

bench-media: venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_media.py

# The first run trains a tiny model for 4 CPU minutes (cached in state/bench/trained-tiny-sd);
# BENCH_TEMPORAL_ARGS="--model builtin:tiny-sd" measures the random-weight one instead.
BENCH_TEMPORAL_ARGS ?= --model trained
bench-temporal: venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/temporal_bench.py $(BENCH_TEMPORAL_ARGS)

bench-prompts: venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/prompt_bench.py

# Full-size random checkpoints are built once into state/real-models (SD 1.5 2.1 GB, SDXL 7 GB).
BENCH_GPU_ARGS ?=
bench-gpu: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python bench/gpu.py $(BENCH_GPU_ARGS)

bench-ray:
	$(MAKE) venv EXTRAS=dev,ray
	HF_HUB_OFFLINE=1 $(BIN)/python bench/ray_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache state

soak: venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/soak.py
