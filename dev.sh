#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv and runs what is asked.
#   ./dev.sh demo [SECONDS]   acc-sim: two cells (4 RSUs each) and 8 OBUs on this machine, report in var/sim
#   ./dev.sh demo-obu [SECONDS]  one OBU agent on a simulated vehicle (virtual CAN + NMEA pty), bounded
#   ./dev.sh test [PYTEST ARGS]  installs what the tests need (Debian + Python), runs pytest
#   ./dev.sh test-slow        the long suites (marked slow)
#   ./dev.sh bench [--full]   the benchmarks (--quick unless --full), in .venv-bench
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

need_python() {
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "dev.sh: Python >= 3.11 is needed ($PY is $("$PY" --version 2>&1))" >&2; exit 1; }
}

setup_venv() {  # $1: extras, e.g. "test" ("" for the runtime dependencies only)
    need_python
    local stamp="$VENV/.installed-${1:-runtime}" spec="."
    [ -n "$1" ] && spec=".[$1]"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/pip" install -q -e "$spec"
        touch "$stamp"
    fi
}

apt_install() {  # install Debian packages whose command is missing: pairs of cmd:package
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "dev.sh: please install: ${missing[*]} (apt-get install ${missing[*]})" >&2; return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

cmd=${1:-help}; shift || true
case "$cmd" in
    demo)
        setup_venv sim
        if ! apt_install mosquitto:mosquitto; then
            echo "dev.sh: no Mosquitto for the cells: running the one-OBU demo instead" >&2
            exec "$VENV/bin/acc-agent" --demo --duration "${1:-20}"
        fi
        exec "$VENV/bin/acc-sim" --rsus 4 --obus 8 --cells 2 --duration "${1:-90}" --report var/sim
        ;;
    demo-obu)
        setup_venv sim
        exec "$VENV/bin/acc-agent" --demo --duration "${1:-20}"
        ;;
    test)
        apt_install mosquitto:mosquitto gpsd:gpsd candump:can-utils
        setup_venv dev
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    test-slow)
        apt_install mosquitto:mosquitto gpsd:gpsd candump:can-utils
        setup_venv dev
        exec "$VENV/bin/python" -m pytest -m slow "$@"
        ;;
    bench)
        # runtime dependencies only, as on a box: test extras (asammdf, OpenCV) would inflate RSS
        VENV=.venv-bench
        setup_venv ""
        for b in tools/bench/[a-z]*.py; do
            if [ "${1:-}" = --full ]; then "$VENV/bin/python" -m "tools.bench.$(basename "$b" .py)"
            else "$VENV/bin/python" -m "tools.bench.$(basename "$b" .py)" --quick; fi
        done
        ;;
    *)
        sed -n '2,7p' "$0"; exit 2 ;;
esac
