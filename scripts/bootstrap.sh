#!/usr/bin/env bash
# Sets up everything foliowatch needs on a fresh Debian machine, idempotently:
#   Debian packages (Prometheus, Alertmanager, kcat, xfsprogs, node_exporter for the
#   benchmark, strace to watch the durable writes' system calls), a Python 3.11+ virtualenv (.venv) with the project and its extras, a
#   Python 3.9 virtualenv (.venv39) with only the agent (the fleet's oldest Python), and
#   Apache Kafka's jars from Maven Central (deploy/kafka/kafka.sh fetch), and the
#   pipeline's optional native decoder and Parquet writer (pipeline/native, C) and the
#   simulator's native encoder (simulator/native, C) built into .venv.
# Each step is skipped when its inputs have not changed (stamp files keyed by content).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
say() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------
apt_pkgs=(prometheus prometheus-alertmanager kcat xfsprogs linux-perf prometheus-node-exporter maven openjdk-17-jre-headless strace systemd)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  # Keep package scripts from starting system services: the project starts its own on
  # loopback ports, by PID.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_ tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_ chmod +x /usr/sbin/policy-rc.d
    trap '$sudo_ rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# --- Python virtualenvs ---------------------------------------------------------------
find_python() {  # find_python 3.11 -> path of an interpreter of that minor version
  local v=$1 c
  for c in "python$v" "$(pyenv root 2>/dev/null)"/versions/"$v".*/bin/python"$v" /usr/bin/python"$v"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys' >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}
stamp_of() { cat pyproject.toml "$0" | sha256sum | cut -c1-16; }

make_venv() {  # make_venv DIR PYTHON EXTRAS
  local dir=$1 py=$2 extras=$3 want
  want="$(stamp_of)-$extras-$("$py" -c 'import sys; print(sys.version.split()[0])')"
  if [ -f "$dir/.foliowatch-stamp" ] && [ "$(cat "$dir/.foliowatch-stamp")" = "$want" ]; then return 0; fi
  # Recreate only when the interpreter changed; otherwise install over the existing env
  # so that a running test or demo using it is not pulled from under its feet.
  if [ ! -x "$dir/bin/python" ] || [ "$("$dir/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)" != "$("$py" -c 'import sys; print(sys.version.split()[0])')" ]; then
    say "creating $dir with $py"
    rm -rf "$dir"
    "$py" -m venv "$dir"
  fi
  say "installing foliowatch[$extras] into $dir"
  "$dir/bin/python" -m pip install -q --upgrade pip setuptools >&2
  "$dir/bin/python" -m pip install -q -e ".[$extras]" >&2
  echo "$want" >"$dir/.foliowatch-stamp"
}

py311=$(find_python 3.11 || find_python 3.12 || find_python 3.13) \
  || { echo "bootstrap: no Python 3.11+ found (pyenv versions, python3.11): install one" >&2; exit 1; }
make_venv .venv "$py311" "all,bench"

# The native codecs (C), in the central venv only, never in the agent's, each optional:
# the pipeline's decoder and window-file writer (pipeline/native: without them the
# pipeline decodes with its Python/polars path, several times the CPU per record, and
# polars writes the Parquet files, ~1 ms more CPU per file) and the simulator's encoder
# (simulator/native: without it the simulator encodes with polars, ~2x the CPU per
# record). Each says once that it is missing.
build_native() {  # build_native DIR STAMP WHAT
  local dir=$1 stamp=$2 what=$3 want
  want="$(cat "$dir"/*.[ch] "$dir/setup.py" "$dir/pyproject.toml" | sha256sum | cut -c1-16)-$(.venv/bin/python -c 'import sys; print(sys.version.split()[0])')"
  if [ "$(cat ".venv/$stamp" 2>/dev/null)" != "$want" ]; then
    say "building the $what ($dir) into .venv"
    if .venv/bin/python -m pip install -q --no-build-isolation "./$dir" >&2; then
      echo "$want" >".venv/$stamp"
    else
      say "the $what did not build (it needs a C compiler and Python's headers): its Python path is used"
    fi
    rm -rf "$dir/build" "$dir"/*.egg-info
  fi
}
build_native pipeline/native .wiredecode-stamp "pipeline's native decoder and Parquet writer"
build_native simulator/native .wireencode-stamp "simulator's native encoder"

if py39=$(find_python 3.9); then
  make_venv .venv39 "$py39" "agent,test"
else
  say "Python 3.9 not found: the agent's tests cannot run under the fleet's oldest Python (install it with pyenv install 3.9)"
  exit 1
fi

# --- Kafka ----------------------------------------------------------------------------
deploy/kafka/kafka.sh fetch >/dev/null
say "ready"
