// One function compiled for AVX-512, AVX2 and the baseline; the loader picks the best the CPU
// runs (GCC function multi-versioning).
#pragma once

#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
