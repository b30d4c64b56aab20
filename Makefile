# The two quickstart commands. Both set everything up first (idempotent, cached).
.PHONY: demo test bootstrap faults

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/foliowatch demo $(ARGS)

test: bootstrap
	scripts/test.sh $(ARGS)

# The whole fault suite (long: kills, 3-broker clusters, full disks, minutes of fuzzing);
# writes docs/reliability.md. `make test` runs only its short cases.
faults: bootstrap
	scripts/faults.sh $(ARGS)
