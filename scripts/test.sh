#!/usr/bin/env bash
# The whole test suite: the project's tests on Python 3.11+ (two workers, a module to a
# worker; then the modules marked serial alone), then the agent's tests again on Python
# 3.9 (the oldest system Python in the fleet). Services (Kafka, Prometheus, Alertmanager)
# are started and stopped by the tests' own fixtures, per worker.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

# pytest's exit code 5 is "no tests collected": a selection (ARGS) without serial tests
pytest_phase() {
    local python=$1 rc=0
    shift
    "$python" -m pytest "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}
workers=${FOLIOWATCH_TEST_WORKERS:-2}
# the slowest tests are listed at the end of each part, to keep the suite within its
# 30-minute budget on 2 cores
echo "== parallel part ($workers workers)"
pytest_phase .venv/bin/python -n "$workers" --dist loadfile -m "not serial" --durations=15 "$@"
echo "== serial part"
pytest_phase .venv/bin/python -m serial --durations=5 "$@"
echo "== agent tests on $(.venv39/bin/python --version)"
# only the modules marked agent39: the others import the 3.11-only central services
mapfile -t agent_tests < <(grep -l "mark.agent39" tests/test_*.py)
# two workers as above; the serial ones (system-wide tracepoint counts) alone after them
pytest_phase .venv39/bin/python -p no:cacheprovider -q -n "$workers" --dist loadfile \
    -m "agent39 and not serial" "${agent_tests[@]}"
pytest_phase .venv39/bin/python -p no:cacheprovider -q -m "agent39 and serial" "${agent_tests[@]}"
