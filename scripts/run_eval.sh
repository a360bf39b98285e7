#!/usr/bin/env bash
# Evaluate a checkpoint with COCO mAP, in the foreground; exits with the evaluation's status.
# Usage: bash scripts/run_eval.sh DEVICE_ID DATASET DATASET_PATH CHECKPOINT_PATH MINDRECORD_PATH [-- eval.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage="Usage: bash $0 DEVICE_ID DATASET DATASET_PATH CHECKPOINT_PATH MINDRECORD_PATH [-- eval.py flags]"
positional=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do positional+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if [ ${#positional[@]} -ne 5 ]; then echo "$usage" >&2; exit 2; fi

DEVICE_ID=${positional[0]}
DATASET=${positional[1]}
DATASET_PATH=$(absolute "${positional[2]}")
CHECKPOINT_PATH=$(absolute "${positional[3]}")
MINDRECORD_PATH=$(absolute "${positional[4]}")
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || die "DEVICE_ID must be a number, got '$DEVICE_ID'"
need_dataset "$DATASET"
need_dir DATASET_PATH "$DATASET_PATH"
need_file CHECKPOINT_PATH "$CHECKPOINT_PATH"
mkdir -p "$MINDRECORD_PATH" || die "cannot create $MINDRECORD_PATH"
OUTPUT_PATH=${EVAL_OUTPUT_PATH:-$(dirname "$CHECKPOINT_PATH")/eval}

export DEVICE_ID RANK_ID=0 RANK_SIZE=1
cd "$ROOT"
run_logged "$OUTPUT_PATH/eval.log" "$PYTHON" eval.py --dataset "$DATASET" --data_url "$DATASET_PATH" \
    --checkpoint_path "$CHECKPOINT_PATH" --mindrecord "$MINDRECORD_PATH" --output_dir "$OUTPUT_PATH" \
    --device_id "$DEVICE_ID" "$@"
