# Fresh-machine entry points; the README's first lines name `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test bench clean browser postgres studio-app

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

# The farm's tests start a throwaway PostgreSQL server (initdb + pg_ctl, no daemon needed): install
# Debian's server binaries when missing (as root; elsewhere `apt-get install -y postgresql`).
postgres:
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		|| (apt-get update -q && apt-get install -y -q --no-install-recommends postgresql) \
		|| echo "WARNING: could not install postgresql; tests/queue (PostgreSQL store) will fail until 'apt-get install -y postgresql'"

# The studio notebook as a standalone web app on http://127.0.0.1:8866 (Voila).
studio-app: install
	cd notebooks && ../$(VENV)/bin/voila studio.ipynb --Voila.ip=127.0.0.1 --port=8866 --no-browser

test: install browser postgres
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --durations=25 --nbmake tests notebooks

clean:
	rm -rf $(VENV) outputs
