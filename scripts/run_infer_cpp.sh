#!/usr/bin/env bash
# C++ inference on a folder of images, then COCO mAP of its results; foreground, exit status of
# the first failing step.
# Usage: bash scripts/run_infer_cpp.sh MODEL_PATH DATA_PATH DVPP ANNO_FILE DEVICE_TYPE [DEVICE_ID] [-- postprocess.py flags]
#   MODEL_PATH  .opencv.onnx from `python export.py --file_format ONNX --opencv true` (OpenCV
#               engine), or .mindir with a build made with -DWITH_MINDSPORE=ON
#   DVPP        CPU (decode and resize on the CPU); DVPP needs an Ascend 310 and is refused here
#   DEVICE_TYPE CPU, GPU or Ascend (GPU and Ascend need the MindSpore build)
# Outputs (result_Files/, time_Result/, infer.log, acc.log) go to $INFER_OUTPUT_PATH, default
# ./infer_output; extra flags after -- go to postprocess.py (e.g. --drop, --num_classes N).
# A folder that holds an earlier run's outputs is refused; INFER_OVERWRITE=1 moves them into
# previous-<time>/ inside it first.
# `sh scripts/...` (the reference's README form; dash on Debian) runs this again under bash.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage="Usage: bash $0 MODEL_PATH DATA_PATH DVPP ANNO_FILE DEVICE_TYPE [DEVICE_ID] [-- postprocess.py flags]"
split_args "$@"
if [ ${#POSITIONAL[@]} -lt 5 ] || [ ${#POSITIONAL[@]} -gt 6 ]; then echo "$usage" >&2; exit 2; fi

MODEL_PATH=$(absolute "${POSITIONAL[0]}")
DATA_PATH=$(absolute "${POSITIONAL[1]}")
DVPP=$(echo "${POSITIONAL[2]}" | tr '[:lower:]' '[:upper:]')
ANNO_FILE=$(absolute "${POSITIONAL[3]}")
DEVICE_TYPE=${POSITIONAL[4]}
DEVICE_ID=${POSITIONAL[5]:-0}
need_file MODEL_PATH "$MODEL_PATH"
need_dir DATA_PATH "$DATA_PATH"
need_file ANNO_FILE "$ANNO_FILE"
case "$DVPP" in
    CPU) ;;
    DVPP) die "DVPP decoding needs an Ascend 310 with its ACL runtime; use CPU" ;;
    *) die "DVPP must be DVPP or CPU, got '${POSITIONAL[2]}'" ;;
esac
case "$DEVICE_TYPE" in CPU|GPU|Ascend) ;; *) die "DEVICE_TYPE must be CPU, GPU or Ascend, got '$DEVICE_TYPE'";; esac
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || die "DEVICE_ID must be a number, got '$DEVICE_ID'"

OUT=$(absolute "${INFER_OUTPUT_PATH:-./infer_output}")
OUTPUTS=(result_Files time_Result build.log infer.log acc.log)
EARLIER=()
for name in "${OUTPUTS[@]}"; do [ -e "$OUT/$name" ] && EARLIER+=("$name"); done
if [ ${#EARLIER[@]} -gt 0 ] && [ "${INFER_OVERWRITE:-0}" != 1 ]; then
    die "$OUT holds an earlier run's outputs (${EARLIER[*]}); set INFER_OUTPUT_PATH to another folder, or INFER_OVERWRITE=1 to move them into $OUT/previous-<time>/"
fi
mkdir -p "$OUT"
if [ ${#EARLIER[@]} -gt 0 ]; then
    ASIDE="$OUT/previous-$(date +%Y%m%d-%H%M%S)"
    mkdir "$ASIDE"
    for name in "${EARLIER[@]}"; do mv "$OUT/$name" "$ASIDE/"; done
    echo "INFER_OVERWRITE=1: the earlier run's outputs are in $ASIDE"
fi
if [ -n "${MS_LITE_HOME:-}" ]; then
    export LD_LIBRARY_PATH="$MS_LITE_HOME/runtime/lib:$MS_LITE_HOME/tools/converter/lib:${LD_LIBRARY_PATH:-}"
fi
run_logged "$OUT/build.log" bash "$ROOT/ascend310_infer/build.sh"
run_logged "$OUT/infer.log" "$ROOT/ascend310_infer/out/main" --model_path "$MODEL_PATH" \
    --dataset_path "$DATA_PATH" --device_type "$DEVICE_TYPE" --device_id "$DEVICE_ID" \
    --result_dir "$OUT/result_Files" --time_dir "$OUT/time_Result" ${CPP_INFER_FLAGS:-}
cd "$ROOT"
run_logged "$OUT/acc.log" "$PYTHON" postprocess.py --result_path "$OUT/result_Files" \
    --img_path "$DATA_PATH" --anno_file "$ANNO_FILE" --output_dir "$OUT" "${EXTRA[@]}"
