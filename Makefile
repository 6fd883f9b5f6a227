# Fresh-machine entry points; the README's first lines name `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU build on disk; pyproject's range then keeps it.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ovi generate --out outputs/demo

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --nbmake tests notebooks

clean:
	rm -rf $(VENV) outputs
