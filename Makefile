# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
VENV_OLDEST ?= .venv-oldest
# Four workers: the crawl tests mostly wait on the sandbox's latencies, so on
# two cores four at once take about a third of the time of one.
PYTEST_WORKERS ?= 4
PYTEST_ARGS ?= -n $(PYTEST_WORKERS)

.PHONY: help install demo demo-cluster test test-newest test-oldest lint typecheck bench clean

help:
	@echo "make demo   - set up, start the local sandbox, crawl the example project through it"
	@echo "make demo-cluster - three crawl processes sharing one site budget through Redis"
	@echo "make test   - lint, typecheck, the whole suite on the newest and the oldest Scrapy"
	@echo "make bench  - the concurrency benchmark (not part of make test)"

$(VENV)/.installed: setup.cfg pyproject.toml constraints/newest.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints/newest.txt -e '.[test,dev]'
	touch $@

$(VENV_OLDEST)/.installed: setup.cfg pyproject.toml constraints/oldest.txt
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/pip install -q -c constraints/oldest.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/python example_project/demo.py

demo-cluster: $(VENV)/.installed
	$(VENV)/bin/python example_project/demo_cluster.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

test-newest: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-oldest: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/python -m pytest $(PYTEST_ARGS)

test: lint typecheck test-newest test-oldest

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/mixed.py starvation --out bench/results
	$(VENV)/bin/python bench/mixed.py soak --out bench/results
	$(VENV)/bin/python bench/overhead.py --out bench/results

clean:
	rm -rf $(VENV) $(VENV_OLDEST) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
