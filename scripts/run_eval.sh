#!/usr/bin/env bash
# Evaluate a checkpoint with COCO mAP, in the foreground; exits with the evaluation's status.
# Usage: bash scripts/run_eval.sh DEVICE_ID DATASET DATASET_PATH CHECKPOINT_PATH MINDRECORD_PATH [-- eval.py flags]
# `sh scripts/...` (the reference's README form; dash on Debian) runs this again under bash.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage="Usage: bash $0 DEVICE_ID DATASET DATASET_PATH CHECKPOINT_PATH MINDRECORD_PATH [-- eval.py flags]"
split_args "$@"
if [ ${#POSITIONAL[@]} -ne 5 ]; then echo "$usage" >&2; exit 2; fi

DEVICE_ID=${POSITIONAL[0]}
DATASET=${POSITIONAL[1]}
DATASET_PATH=$(absolute "${POSITIONAL[2]}")
CHECKPOINT_PATH=$(absolute "${POSITIONAL[3]}")
MINDRECORD_PATH=$(absolute "${POSITIONAL[4]}")
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
    --device_id "$DEVICE_ID" "${EXTRA[@]}"
