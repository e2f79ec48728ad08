#!/usr/bin/env bash
# peerstore launcher: sets up .venv on first use, then runs what you asked for.
#
#   ./launch.sh                 start one node from ./config.yaml (see `peerstore init`)
#   ./launch.sh --local N       start N nodes on this machine (data under ./data); Ctrl-C stops all
#   ./launch.sh test [ARGS]     run the test suite (ARGS go to pytest)
#   ./launch.sh bench [ARGS]    run the benchmark (python -m peerstore.bench)
#   ./launch.sh peerstore ARGS  run the peerstore CLI from the project's venv
#
# Plain bash 3.2 compatible (macOS): no associative arrays, no ${var,,}, no mapfile.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
venv="$here/.venv"

find_python() {
    for candidate in "${PEERSTORE_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

explain_build_failure() {
    py=$1
    echo "" >&2
    echo "launch.sh: installing peerstore's dependencies failed (see above)." >&2
    hdr=$("$py" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_paths()["include"], "Python.h"))')
    missing=""
    command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing="a C compiler"
    [ -f "$hdr" ] || missing="${missing:+$missing and }the Python headers ($hdr)"
    if [ -n "$missing" ]; then
        echo "zfec has no prebuilt wheel for this machine and builds from source, which needs $missing." >&2
        case "$(uname -s)" in
            Darwin) echo "Fix: xcode-select --install" >&2 ;;
            *)
                pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
                echo "Fix: sudo apt-get install -y build-essential python3-dev python${pyver}-dev" >&2
                ;;
        esac
        echo "Then run ./launch.sh again." >&2
    fi
    exit 1
}

ensure_venv() {
    py=$(find_python) || {
        echo "launch.sh: peerstore needs Python 3.11 or newer; none found on PATH." >&2
        echo "Install it (e.g. 'sudo apt-get install -y python3' or 'brew install python@3.12') and retry." >&2
        exit 1
    }
    if [ ! -x "$venv/bin/python" ]; then
        echo "launch.sh: creating $venv" >&2
        "$py" -m venv "$venv"
    fi
    stamp="$venv/.peerstore-installed"
    want=$(cksum < pyproject.toml | cut -d' ' -f1)
    have=$(cat "$stamp" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
        echo "launch.sh: installing peerstore and its dependencies into .venv" >&2
        "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
        "$venv/bin/python" -m pip install --quiet -e ".[test]" || explain_build_failure "$venv/bin/python"
        echo "$want" > "$stamp"
    fi
}

ensure_venv
PATH="$venv/bin:$PATH"
export PATH

cmd=${1:-node}
case "$cmd" in
    test)
        shift
        exec "$venv/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        exec "$venv/bin/python" -m peerstore.bench "$@"
        ;;
    --local|local)
        shift
        exec "$venv/bin/peerstore" local "$@"
        ;;
    peerstore)
        shift
        exec "$venv/bin/peerstore" "$@"
        ;;
    node)
        [ $# -gt 0 ] && shift
        if [ ! -f config.yaml ] && [ -z "${PEERSTORE_CONFIG:-}" ]; then
            echo "launch.sh: no config.yaml here. Create one with './launch.sh peerstore init'," >&2
            echo "or try a local demo cluster with './launch.sh --local 5'." >&2
            exit 2
        fi
        exec "$venv/bin/peerstore" node --config "${PEERSTORE_CONFIG:-config.yaml}" "$@"
        ;;
    -h|--help|help)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        echo "launch.sh: unknown command '$cmd' (try ./launch.sh --help)" >&2
        exit 2
        ;;
esac
