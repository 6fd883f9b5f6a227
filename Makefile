# Fresh-machine entry points; the README's first lines name `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test bench clean browser studio-app

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU build on disk; pyproject's range then keeps it.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ovi generate --out outputs/demo

# The browser test drives Debian's chromium (no browser build can be downloaded): install it when
# missing (about a minute, as root; elsewhere install it yourself).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "WARNING: could not install chromium; tests/ui will fail until 'apt-get install -y chromium'"

# The studio notebook as a standalone web app on http://127.0.0.1:8866 (Voila).
studio-app: install
	cd notebooks && ../$(VENV)/bin/voila studio.ipynb --Voila.ip=127.0.0.1 --port=8866 --no-browser

test: install browser
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --nbmake tests notebooks

clean:
	rm -rf $(VENV) outputs
