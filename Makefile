# The two quickstart commands. Both set everything up first (idempotent, cached).
.PHONY: demo test bootstrap

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/foliowatch demo $(ARGS)

test: bootstrap
	scripts/test.sh $(ARGS)
