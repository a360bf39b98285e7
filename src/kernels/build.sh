#!/usr/bin/env bash
# Build build/kernels/libssd_cpu_kernels.so: our CPU kernels for MindSpore (the oneDNN convolution,
# BatchNorm with its activation fused in, the gradients finite check,
# the fused focal loss).
# Needs g++, the project's virtual environment with mindspore (its bundled libdnnl.so.3 is what
# we link against) and onednn-devel (headers, from requirements.txt).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
die() { echo "error: $*" >&2; exit 2; }
command -v g++ >/dev/null || die "g++ not found"
prefix="$("$python" -c 'import sys; print(sys.prefix)')"
library_dir="$("$python" -c 'import os, mindspore; print(os.path.join(os.path.dirname(mindspore.__file__), "lib"))' 2>/dev/null)" \
    || die "mindspore is not importable by $python"
headers="$prefix/include/oneapi/dnnl"
[ -f "$headers/dnnl.hpp" ] || die "oneDNN headers not found in $headers (pip install onednn-devel==2025.3.0)"
[ -f "$library_dir/libdnnl.so.3" ] || die "MindSpore's libdnnl.so.3 not found in $library_dir"
out="$root/build/kernels"
mkdir -p "$out/include/oneapi/dnnl"
# onednn-devel's config describes a SYCL/TBB build; MindSpore's library uses the threadpool runtime.
sed -e 's/^#define DNNL_CPU_THREADING_RUNTIME .*/#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_THREADPOOL/' \
    -e 's/^#define DNNL_CPU_RUNTIME .*/#define DNNL_CPU_RUNTIME DNNL_RUNTIME_THREADPOOL/' \
    -e 's/^#define DNNL_GPU_RUNTIME .*/#define DNNL_GPU_RUNTIME DNNL_RUNTIME_NONE/' \
    -e 's/^#define DNNL_GPU_VENDOR .*/#define DNNL_GPU_VENDOR DNNL_VENDOR_NONE/' \
    "$headers/dnnl_config.h" > "$out/include/oneapi/dnnl/dnnl_config.h"
flags=(-O3 -fopenmp-simd -std=c++17 -fPIC -Wall -I"$out/include" -I"$prefix/include")
objects=()
for path in "$here"/*.cc; do
    source="$(basename "$path" .cc)"
    extra=()
    # focal_loss: -ffast-math lets GCC call glibc's vector exp / log1p (see the file's top).
    [ "$source" = focal_loss ] && extra=(-ffast-math)
    # nms: the same float64 results as the Python NMS, so no fused multiply-add.
    [ "$source" = nms ] && extra=(-ffp-contract=off)
    g++ "${flags[@]}" "${extra[@]}" -c "$here/$source.cc" -o "$out/$source.o"
    objects+=("$out/$source.o")
done
g++ -shared "${objects[@]}" -L"$library_dir" -l:libdnnl.so.3 -Wl,-rpath,"$library_dir" -pthread \
    -lmvec -o "$out/libssd_cpu_kernels.so.tmp"
mv "$out/libssd_cpu_kernels.so.tmp" "$out/libssd_cpu_kernels.so"
# Which sources it was built from: src/device.py refuses a library built from others.
# (sha256 of the *.cc and *.h files and this script, concatenated in name order, as
# kernel_sources_digest does.)
(cd "$here" && LC_ALL=C ls *.cc *.h build.sh | LC_ALL=C sort | xargs cat | sha256sum | cut -d' ' -f1) \
    > "$out/libssd_cpu_kernels.so.sha256"
echo "Built $out/libssd_cpu_kernels.so"
