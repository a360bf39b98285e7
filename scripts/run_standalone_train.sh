#!/usr/bin/env bash
# Train on one device, in the foreground; exits with the training's status.
# Usage: bash scripts/run_standalone_train.sh DEVICE_ID DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH]
# Extra train.py flags can follow after --, e.g. ... -- --run_platform CPU --epoch_size 10
# `sh scripts/...` (the reference's README form; dash on Debian) runs this again under bash.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage="Usage: bash $0 DEVICE_ID DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]"
split_args "$@"
if [ ${#POSITIONAL[@]} -lt 5 ] || [ ${#POSITIONAL[@]} -gt 6 ]; then echo "$usage" >&2; exit 2; fi

DEVICE_ID=${POSITIONAL[0]}
DATASET=${POSITIONAL[1]}
DATASET_PATH=$(absolute "${POSITIONAL[2]}")
MINDRECORD_PATH=$(absolute "${POSITIONAL[3]}")
TRAIN_OUTPUT_PATH=$(absolute "${POSITIONAL[4]}")
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || die "DEVICE_ID must be a number, got '$DEVICE_ID'"
need_dataset "$DATASET"
need_dir DATASET_PATH "$DATASET_PATH"
mkdir -p "$MINDRECORD_PATH" "$TRAIN_OUTPUT_PATH" || die "cannot create output folders"
pretrained=()
if [ ${#POSITIONAL[@]} -eq 6 ]; then
    PRE_TRAINED_PATH=$(absolute "${POSITIONAL[5]}")
    need_file PRE_TRAINED_PATH "$PRE_TRAINED_PATH"
    pretrained=(--pre_trained "$PRE_TRAINED_PATH")
fi

export DEVICE_ID RANK_ID=0 RANK_SIZE=1
cd "$ROOT"
run_logged "$TRAIN_OUTPUT_PATH/train.log" "$PYTHON" train.py --dataset "$DATASET" \
    --data_url "$DATASET_PATH" --mindrecord_url "$MINDRECORD_PATH" --train_url "$TRAIN_OUTPUT_PATH" \
    --device_id "$DEVICE_ID" "${pretrained[@]}" "${EXTRA[@]}"
