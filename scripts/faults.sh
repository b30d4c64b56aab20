#!/usr/bin/env bash
# The fault suite (`make faults`): every case of tests/faults/, the long ones too
# (--faults: 3-broker clusters, kills, full disks; about 30-40 minutes on 2 cores), each
# appending its sample accounting to a results file; then the pipeline fuzz benchmark
# for FUZZ_MINUTES (default 5); then docs/reliability.md, rendered from both.
# Arguments go to pytest (e.g. -k kafka). Exit status: the suite's, or the fuzzer's.
set -uo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
work=$(mktemp -d /tmp/foliowatch-faults.XXXXXX)
export FOLIOWATCH_FAULTS_RESULTS="$work/results.jsonl"
: >"$FOLIOWATCH_FAULTS_RESULTS"
.venv/bin/python -m pytest tests/faults --faults -p no:cacheprovider -q \
  --durations=0 --junitxml="$work/junit.xml" "$@"
suite=$?
.venv/bin/python benchmarks/fuzz_pipeline.py --minutes "${FUZZ_MINUTES:-5}" \
  --json "$work/fuzz.json" >"$work/fuzz.log" 2>&1
fuzz=$?
tail -n 20 "$work/fuzz.log"
.venv/bin/python scripts/reliability_report.py --results "$FOLIOWATCH_FAULTS_RESULTS" \
  --junit "$work/junit.xml" --fuzz "$work/fuzz.json" --output docs/reliability.md
echo "faults: docs/reliability.md written (raw results in $work)"
if [ "$suite" -ne 0 ]; then exit "$suite"; fi
exit "$fuzz"
