#!/usr/bin/env bash
# The whole test suite: the project's tests on Python 3.11+, then the agent's tests again
# on Python 3.9 (the oldest system Python in the fleet). Services (Kafka, Prometheus,
# Alertmanager) are started and stopped by the tests' own fixtures.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
# the slowest tests are listed at the end, to keep the suite within its 30-minute budget
.venv/bin/python -m pytest --durations=15 "$@"
echo "== agent tests on $(.venv39/bin/python --version)"
# only the modules marked agent39: the others import the 3.11-only central services
mapfile -t agent_tests < <(grep -l "mark.agent39" tests/test_*.py)
.venv39/bin/python -m pytest -m agent39 -p no:cacheprovider -q "${agent_tests[@]}"
