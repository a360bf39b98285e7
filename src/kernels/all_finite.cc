// Whether every value of every gradient is finite, as one MindSpore Custom AOT op for the CPU:
// one pass over the gradients where MindSpore needed a concatenated copy of all of them (51 MB
// for this model), IsFinite over it and a reduction. Gradients are checked in parallel on the
// kernels' pool; the test of a float is on its exponent bits (all ones: inf or NaN), which
// vectorises.
#include <atomic>
#include <cstdint>
#include <cstring>

#include "threads.h"
#include "simd.h"


namespace {

SIMD_CLONES bool Finite(const uint32_t *bits, int64_t n) {
  uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= (bits[i] & 0x7f800000u) == 0x7f800000u;
  return bad == 0;
}

int64_t Count(const int64_t *shape, int ndim) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

}  // namespace

extern "C" {

// params: any number of float32 tensors, then the output: bool (1,).
int AllFinite(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
              void *stream, void *extra) {
  const int inputs = nparam - 1;
  std::atomic<bool> finite{true};
  KernelParallelFor(inputs, [&](int i, int) {
    if (finite.load(std::memory_order_relaxed) &&
        !Finite(static_cast<const uint32_t *>(params[i]), Count(shapes[i], ndims[i]))) {
      finite.store(false, std::memory_order_relaxed);
    }
  });
  *static_cast<bool *>(params[inputs]) = finite.load();
  return 0;
}

}  // extern "C"
