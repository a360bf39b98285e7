#!/usr/bin/env bash
# Data-parallel training on several devices, in the foreground; exits non-zero if any rank fails
# (the others are stopped) and names that rank's log.
#
# Ascend with a rank table (the reference's form):
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
#   Starts one process per device of this server listed in the rank table (DEVICE_NUM, if set,
#   takes the first DEVICE_NUM of them); a table that lists no device of this host, or a
#   DEVICE_NUM outside 1 .. those devices, is refused before anything starts.
# msrun (CPU, GPU, or Ascend without a rank table), one or several machines:
#   bash scripts/run_distribute_train.sh --worker_num N [--local_worker_num M] [--master_addr HOST]
#        [--master_port PORT] [--node_rank R] [--timeout SECONDS] [--comm_timeout SECONDS] DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
#   N processes in all, M of them on this machine (default N); run the same command on every
#   machine with its --node_rank and the first machine's --master_addr. --timeout: how long the
#   processes wait for each other when the job starts; --comm_timeout: how long a CPU collective
#   waits for a rank (MS_CPU_COMM_OP_TIMEOUT; default that variable, else train.py's 1800).
# Logs: TRAIN_OUTPUT_PATH/logs/ (worker_<rank>.log, scheduler.log for msrun).
# `sh scripts/...` (the reference's README form; dash on Debian) runs this again under bash.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage="Usage: bash $0 RANK_TABLE_FILE DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
   or: bash $0 --worker_num N [--local_worker_num M] [--master_addr HOST] [--master_port PORT] [--node_rank R] [--timeout S] [--comm_timeout S] DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]"

WORKER_NUM="" LOCAL_WORKER_NUM="" MASTER_ADDR=127.0.0.1 MASTER_PORT=8118 NODE_RANK=-1 TIMEOUT=600
COMM_TIMEOUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --worker_num) WORKER_NUM=${2:-}; shift 2 ;;
        --local_worker_num) LOCAL_WORKER_NUM=${2:-}; shift 2 ;;
        --master_addr) MASTER_ADDR=${2:-}; shift 2 ;;
        --master_port) MASTER_PORT=${2:-}; shift 2 ;;
        --node_rank) NODE_RANK=${2:-}; shift 2 ;;
        --timeout) TIMEOUT=${2:-}; shift 2 ;;
        --comm_timeout) COMM_TIMEOUT=${2:-}; shift 2 ;;
        *) break ;;
    esac
done
split_args "$@"
if [ -n "$WORKER_NUM" ]; then MODE=msrun; FIRST=0; else MODE=ranktable; FIRST=1; fi
count=${#POSITIONAL[@]}
if [ $count -lt $((FIRST + 4)) ] || [ $count -gt $((FIRST + 5)) ]; then echo "$usage" >&2; exit 2; fi
for name in WORKER_NUM LOCAL_WORKER_NUM MASTER_PORT TIMEOUT COMM_TIMEOUT; do
    value=${!name}
    [ -z "$value" ] || [[ "$value" =~ ^[0-9]+$ ]] || die "--${name,,} must be a number, got '$value'"
done
[[ "$NODE_RANK" =~ ^-?[0-9]+$ ]] || die "--node_rank must be a number, got '$NODE_RANK'"
[ -z "$COMM_TIMEOUT" ] || [ "$COMM_TIMEOUT" -gt 0 ] || die "--comm_timeout must be above 0 seconds"
# The CPU collectives read it when the job starts (src.engine.agreement); unset, train.py sets
# its default.
[ -z "$COMM_TIMEOUT" ] || export MS_CPU_COMM_OP_TIMEOUT=$COMM_TIMEOUT

DATASET=${POSITIONAL[$FIRST]}
DATASET_PATH=$(absolute "${POSITIONAL[$((FIRST + 1))]}")
MINDRECORD_PATH=$(absolute "${POSITIONAL[$((FIRST + 2))]}")
TRAIN_OUTPUT_PATH=$(absolute "${POSITIONAL[$((FIRST + 3))]}")
need_dataset "$DATASET"
need_dir DATASET_PATH "$DATASET_PATH"
if [ "$MODE" = ranktable ]; then
    # This host's devices in the table, checked before anything is created or started.
    RANK_TABLE_FILE=$(absolute "${POSITIONAL[0]}")
    need_file RANK_TABLE_FILE "$RANK_TABLE_FILE"
    devices=$("$PYTHON" - "$RANK_TABLE_FILE" <<'PY'
import json, os, socket, subprocess, sys

def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

path = sys.argv[1]
try:
    with open(path) as handle:
        table = json.load(handle)
    servers = table["server_list"]
    devices = {s["server_id"]: [(str(d["device_id"]), str(d["rank_id"])) for d in s["device"]]
               for s in servers}
except (OSError, ValueError, KeyError, TypeError) as exc:
    fail(f"RANK_TABLE_FILE {path} is not a readable rank table (json with server_list, each "
         f"server with server_id and device: device_id, rank_id): {exc!r}")
host = {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"}
for name in list(host):
    try:
        host.update(info[4][0] for info in socket.getaddrinfo(name, None))
    except OSError:
        pass
try:
    host.update(subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                               timeout=10).stdout.split())
except (OSError, subprocess.SubprocessError):
    pass
local = [pair for server, pairs in devices.items() if server in host for pair in pairs]
if not local:
    fail(f"{path} lists no device of this host: its servers are "
         f"{', '.join(map(str, devices)) or '(none)'}, this host is "
         f"{', '.join(sorted(host))}. Run this on a server the table lists, or fix its "
         "server_id (nothing was started)")
wanted = os.environ.get("DEVICE_NUM", "")
if wanted:
    if not wanted.isdigit() or not 1 <= int(wanted) <= len(local):
        fail(f"DEVICE_NUM={wanted}: this host has {len(local)} device(s) in {path}; set "
             f"DEVICE_NUM to 1 .. {len(local)}, or unset it to use all of them (nothing was "
             "started)")
    local = local[:int(wanted)]
print(" ".join(f"{device}:{rank}" for device, rank in local))
print(sum(len(pairs) for pairs in devices.values()))
PY
) || exit 2
    pairs=($(echo "$devices" | head -n 1))
    RANK_SIZE=$(echo "$devices" | tail -n 1)
fi
mkdir -p "$MINDRECORD_PATH" "$TRAIN_OUTPUT_PATH/logs" || die "cannot create output folders"
pretrained=()
if [ $count -eq $((FIRST + 5)) ]; then
    PRE_TRAINED_PATH=$(absolute "${POSITIONAL[$((FIRST + 4))]}")
    need_file PRE_TRAINED_PATH "$PRE_TRAINED_PATH"
    pretrained=(--pre_trained "$PRE_TRAINED_PATH")
fi
LOGS="$TRAIN_OUTPUT_PATH/logs"
args=(train.py --distribute true --dataset "$DATASET" --data_url "$DATASET_PATH"
      --mindrecord_url "$MINDRECORD_PATH" --train_url "$TRAIN_OUTPUT_PATH" "${pretrained[@]}"
      "${EXTRA[@]}")
cd "$ROOT"

report_failure() {
    local failed=$1
    echo "FAILED: the distributed job did not finish." >&2
    for log in "$LOGS"/worker_*.log; do
        [ -f "$log" ] || continue
        if grep -qE "Traceback|^error:|Error code|exit with exception|Killed" "$log"; then
            echo "  see $log" >&2
            grep -E "^error:|Error:|Traceback" "$log" | tail -n 2 | sed 's/^/    /' >&2
        fi
    done
    if [ -n "$failed" ]; then
        echo "  first failing rank: $failed, log $LOGS/worker_$failed.log" >&2
        tail -n 3 "$LOGS/worker_$failed.log" 2>/dev/null | sed 's/^/    /' >&2
    fi
    echo "  all logs: $LOGS" >&2
}

if [ "$MODE" = msrun ]; then
    LOCAL_WORKER_NUM=${LOCAL_WORKER_NUM:-$WORKER_NUM}
    # msrun starts the `python` found on PATH: make it this project's.
    [ -x "$ROOT/.venv/bin/python" ] && export PATH="$ROOT/.venv/bin:$PATH"
    command -v msrun >/dev/null || die "msrun not found (it comes with the mindspore package)"
    node=()
    [ "$NODE_RANK" -ge 0 ] && node=(--node_rank "$NODE_RANK")
    echo "msrun: $WORKER_NUM processes ($LOCAL_WORKER_NUM here), scheduler $MASTER_ADDR:$MASTER_PORT; logs in $LOGS"
    msrun --worker_num "$WORKER_NUM" --local_worker_num "$LOCAL_WORKER_NUM" \
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "${node[@]}" \
        --log_dir "$LOGS" --join True --cluster_time_out "$TIMEOUT" --tail_worker_log 0 \
        "${args[@]}" > "$LOGS/msrun.log" 2>&1 &
    launcher=$!
    tail -n +1 -f "$LOGS/msrun.log" --pid "$launcher" 2>/dev/null &
    trap 'kill "$launcher" 2>/dev/null' INT TERM
    # Which process is which rank, so that a failure can be named.
    declare -A rank_of=()
    while kill -0 "$launcher" 2>/dev/null; do
        for proc in /proc/[0-9]*; do
            pid=${proc#/proc/}
            [ -z "${rank_of[$pid]:-}" ] || continue
            grep -qa -- "$TRAIN_OUTPUT_PATH" "$proc/cmdline" 2>/dev/null || continue
            grep -qa "train.py" "$proc/cmdline" 2>/dev/null || continue
            rank=$(tr '\0' '\n' < "$proc/environ" 2>/dev/null | sed -n 's/^RANK_ID=//p')
            [ -n "$rank" ] && rank_of[$pid]=$rank
        done
        sleep 1
    done
    set +e
    wait "$launcher"
    status=$?
    set -e
    sleep 0.2
    if [ $status -ne 0 ]; then
        failed=""
        for pid in $(sed -n 's/.*Worker process \([0-9]*\) exit with exception.*/\1/p' "$LOGS/msrun.log"); do
            failed=${failed:-${rank_of[$pid]:-}}
        done
        [ -n "$failed" ] || failed=$(grep -l -E "Traceback|^error:" "$LOGS"/worker_*.log 2>/dev/null |
                                     head -n 1 | sed -E 's/.*worker_([0-9]+)\.log/\1/')
        report_failure "$failed"
        exit 1
    fi
    exit 0
fi

export RANK_TABLE_FILE RANK_SIZE
echo "rank table: ${#pairs[@]} processes here of $RANK_SIZE; logs in $LOGS"
pids=() ranks=()
for pair in "${pairs[@]}"; do
    device=${pair%%:*} rank=${pair##*:}
    DEVICE_ID=$device RANK_ID=$rank "$PYTHON" "${args[@]}" > "$LOGS/worker_$rank.log" 2>&1 &
    pids+=($!) ranks+=($rank)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
status=0 failed=""
while [ ${#pids[@]} -gt 0 ]; do
    remaining=() remaining_ranks=()
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            remaining+=(${pids[$i]}) remaining_ranks+=(${ranks[$i]})
        else
            wait "${pids[$i]}" || { status=1; failed=${failed:-${ranks[$i]}}; }
        fi
    done
    pids=("${remaining[@]}") ranks=("${remaining_ranks[@]}")
    if [ $status -ne 0 ] && [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true; fi
    [ ${#pids[@]} -gt 0 ] && sleep 1
done
if [ $status -ne 0 ]; then report_failure "$failed"; exit 1; fi
echo "All ${#pairs[@]} processes finished; outputs in $TRAIN_OUTPUT_PATH"
