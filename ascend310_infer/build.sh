#!/usr/bin/env bash
# Build ascend310_infer/out/main. Needs cmake, a C++17 compiler and OpenCV with its dnn module
# (Debian/Ubuntu: apt-get install cmake g++ libopencv-dev). Extra arguments go to cmake,
# e.g. -DWITH_MINDSPORE=ON -DMINDSPORE_PATH=/path/to/mindspore-lite for MINDIR inference.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v cmake >/dev/null || { echo "error: cmake not found (apt-get install cmake)" >&2; exit 2; }
cmake -S "$here" -B "$here/build" "$@" >/dev/null
cmake --build "$here/build" -j "$(nproc)"
mkdir -p "$here/out"
cp "$here/build/main" "$here/out/main"
echo "Built $here/out/main"
