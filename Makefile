# The two set-up commands of README.md. Both install what they need first (idempotent).
VENV := .venv
MC := $(VENV)/bin/metalchain
DEMO_SITE ?= demo-site

.PHONY: bootstrap demo demo-down test test-unit lint

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	@./scripts/demo.sh "$(DEMO_SITE)"

demo-down: bootstrap
	@./scripts/demo-down.sh "$(DEMO_SITE)"

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python tests/streams.py

test-unit: bootstrap
	$(VENV)/bin/python -m pytest -m unit tests

lint: bootstrap
	$(VENV)/bin/ruff check .
