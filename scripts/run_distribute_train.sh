#!/usr/bin/env bash
# Data-parallel training on several devices, in the foreground; exits non-zero if any rank fails
# (the others are stopped) and names that rank's log.
#
# Ascend with a rank table (the reference's form):
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
#   Starts one process per device of this server listed in the rank table (DEVICE_NUM, if set,
#   takes the first DEVICE_NUM of them).
# msrun (CPU, GPU, or Ascend without a rank table), one or several machines:
#   bash scripts/run_distribute_train.sh --worker_num N [--local_worker_num M] [--master_addr HOST]
#        [--master_port PORT] [--node_rank R] [--timeout SECONDS] DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
#   N processes in all, M of them on this machine (default N); run the same command on every
#   machine with its --node_rank and the first machine's --master_addr.
# Logs: TRAIN_OUTPUT_PATH/logs/ (worker_<rank>.log, scheduler.log for msrun).
# `sh scripts/...` (the reference's README form; dash on Debian) runs this again under bash.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage="Usage: bash $0 RANK_TABLE_FILE DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
   or: bash $0 --worker_num N [--local_worker_num M] [--master_addr HOST] [--master_port PORT] [--node_rank R] [--timeout S] DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]"

WORKER_NUM="" LOCAL_WORKER_NUM="" MASTER_ADDR=127.0.0.1 MASTER_PORT=8118 NODE_RANK=-1 TIMEOUT=600
while [ $# -gt 0 ]; do
    case "$1" in
        --worker_num) WORKER_NUM=${2:-}; shift 2 ;;
        --local_worker_num) LOCAL_WORKER_NUM=${2:-}; shift 2 ;;
        --master_addr) MASTER_ADDR=${2:-}; shift 2 ;;
        --master_port) MASTER_PORT=${2:-}; shift 2 ;;
        --node_rank) NODE_RANK=${2:-}; shift 2 ;;
        --timeout) TIMEOUT=${2:-}; shift 2 ;;
        *) break ;;
    esac
done
split_args "$@"
if [ -n "$WORKER_NUM" ]; then MODE=msrun; FIRST=0; else MODE=ranktable; FIRST=1; fi
count=${#POSITIONAL[@]}
if [ $count -lt $((FIRST + 4)) ] || [ $count -gt $((FIRST + 5)) ]; then echo "$usage" >&2; exit 2; fi
for name in WORKER_NUM LOCAL_WORKER_NUM MASTER_PORT TIMEOUT; do
    value=${!name}
    [ -z "$value" ] || [[ "$value" =~ ^[0-9]+$ ]] || die "--${name,,} must be a number, got '$value'"
done
[[ "$NODE_RANK" =~ ^-?[0-9]+$ ]] || die "--node_rank must be a number, got '$NODE_RANK'"

DATASET=${POSITIONAL[$FIRST]}
DATASET_PATH=$(absolute "${POSITIONAL[$((FIRST + 1))]}")
MINDRECORD_PATH=$(absolute "${POSITIONAL[$((FIRST + 2))]}")
TRAIN_OUTPUT_PATH=$(absolute "${POSITIONAL[$((FIRST + 3))]}")
need_dataset "$DATASET"
need_dir DATASET_PATH "$DATASET_PATH"
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

RANK_TABLE_FILE=$(absolute "${POSITIONAL[0]}")
need_file RANK_TABLE_FILE "$RANK_TABLE_FILE"
devices=$("$PYTHON" -c "
import json, socket, sys
table = json.load(open(sys.argv[1]))
servers = table.get('server_list', [])
local = [s for s in servers if s.get('server_id') in (socket.gethostbyname(socket.gethostname()), socket.gethostname())] or servers[:1]
print(' '.join(f\"{d['device_id']}:{d['rank_id']}\" for s in local for d in s.get('device', [])))
print(sum(len(s.get('device', [])) for s in servers))
" "$RANK_TABLE_FILE") || die "RANK_TABLE_FILE $RANK_TABLE_FILE is not a readable rank table (json with server_list)"
pairs=($(echo "$devices" | head -n 1))
RANK_SIZE=$(echo "$devices" | tail -n 1)
[ ${#pairs[@]} -gt 0 ] || die "$RANK_TABLE_FILE lists no devices"
if [ -n "${DEVICE_NUM:-}" ]; then pairs=("${pairs[@]:0:$DEVICE_NUM}"); fi
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
