# The two commands the README starts with: `make test` and `make demo`.
# Everything they need is installed by the targets below, on a fresh machine of this kind.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo lint typecheck pytest venv system-deps controlplane benchmarks clean

test: lint typecheck pytest ## ruff, mypy (strict on src/) and the whole pytest suite

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version)'
	@echo "==> creating $(VENV) and installing image-ancestry (editable) with its test dependencies"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	@touch $(STAMP)

system-deps: ## Debian packages the tests use for real components (hack/system-deps.txt)
	@hack/install-system-deps.sh

controlplane: $(STAMP) ## build kube-apiserver and etcd once (cached under ~/.cache/image-ancestry)
	@$(BIN)/image-ancestry cluster build >/dev/null

lint: $(STAMP)
	@echo "==> ruff"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	@echo "==> mypy (strict on src/)"
	$(BIN)/mypy

pytest: $(STAMP) system-deps controlplane
	@echo "==> pytest"
	$(BIN)/pytest $(PYTEST_ARGS)

demo: $(STAMP) controlplane ## the seed's forest on the local control plane, end to end
	@hack/demo.sh

benchmarks: $(STAMP) controlplane ## print figures (and their baselines); asserts nothing
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/operator.py
	$(BIN)/python benchmarks/policy.py

clean:
	-$(BIN)/image-ancestry cluster stop
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
