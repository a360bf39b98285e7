#!/usr/bin/env bash
# Helpers shared by the run_*.sh scripts (sourced, not run).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The project's virtual environment if there is one (make setup), else the python on PATH.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

die() { echo "error: $*" >&2; exit 2; }

absolute() { realpath -m "$1"; }

need_dir() { [ -d "$2" ] || die "$1 '$2' is not a directory"; }

need_file() { [ -f "$2" ] || die "$1 '$2' is not a file"; }

need_dataset() {
    case "$1" in coco|voc|other) ;; *) die "DATASET must be coco, voc or other, got '$1'";; esac
}

# Runs a command in the foreground, copying its output to a log; exits with its status.
run_logged() {
    local log=$1; shift
    mkdir -p "$(dirname "$log")"
    echo "Running: $*"
    echo "Log: $log"
    set +e
    "$@" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "FAILED with exit status $status; see $log" >&2
    fi
    return "$status"
}

# split_args "$@": the arguments before a "--" go to the array POSITIONAL, those after it to
# EXTRA (flags passed through to the Python program).
split_args() {
    POSITIONAL=()
    EXTRA=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do POSITIONAL+=("$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    EXTRA=("$@")
}
