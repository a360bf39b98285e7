// Winograd F(4x4, 3x3) convolution over our blocked activation layout (aBcd8b / aBcd16b:
// N, C/B, H, W, B): 3x3 kernel, stride 1, padding 1, one group; 4x fewer multiplies than direct
// convolution (Lavin & Gray, 2016). The forward, the input gradient (the same computation
// on dy with the weights turned by 180 degrees and their channel roles swapped), and the weight
// gradient (the same transforms with the roles of filter and output exchanged, see winograd.h).
//
// Each 4x4 output tile is computed from the 6x6 input patch around it:
//   Y = A^T [ (G g G^T) . (B^T d B) ] A
// with the transforms below. The input patches are transformed into V (T, 36, C) (T tiles, a
// tile's 36 positions side by side, channels contiguous), the weights into U (36, C, K); the 36
// products M_i = V_i U_i (T x C by C x K, V_i read with a row stride of 36 C) are one batched
// GEMM, the caller's (onednn_conv.cc: oneDNN's matmul); M (T, 36, K) is transformed back into
// y, with the bias, a residual and the activation applied on the way. One position's B
// channels are one vector in every transform. Tile order, channel order and GEMM are fixed:
// results do not depend on timing. Rounding differs from direct convolution's by ~1e-5 of the
// output's range.
#include "winograd.h"

#include <cstdint>
#include <vector>

#include "simd.h"
#include "threads.h"

namespace {

constexpr int kAlpha = 6;                  // input patch side: 4x4 outputs from 6x6 inputs
constexpr int kTile = 4;                   // output tile side
static_assert(kWinogradPositions == kAlpha * kAlpha, "one transformed value per patch position");

// t = B^T d over six vectors (rows or columns of the patch):
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
//          0 4 0 -5 0 1].
template <int B>
inline void InputTransform(const float *const d[kAlpha], float *const t[kAlpha]) {
#pragma omp simd
  for (int l = 0; l < B; ++l) {
    const float d0 = d[0][l], d1 = d[1][l], d2 = d[2][l], d3 = d[3][l], d4 = d[4][l],
                d5 = d[5][l];
    t[0][l] = 4.0f * d0 - 5.0f * d2 + d4;
    t[1][l] = -4.0f * (d1 + d2) + d3 + d4;
    t[2][l] = 4.0f * (d1 - d2) - d3 + d4;
    t[3][l] = 2.0f * (d3 - d1) - d2 + d4;
    t[4][l] = 2.0f * (d1 - d3) - d2 + d4;
    t[5][l] = 4.0f * d1 - 5.0f * d3 + d5;
  }
}

// o = A^T m over six vectors: A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
template <int B>
inline void OutputTransform(const float *const m[kAlpha], float *const o[kTile]) {
#pragma omp simd
  for (int l = 0; l < B; ++l) {
    const float sum12 = m[1][l] + m[2][l], diff12 = m[1][l] - m[2][l];
    const float sum34 = m[3][l] + m[4][l], diff34 = m[3][l] - m[4][l];
    o[0][l] = m[0][l] + sum12 + sum34;
    o[1][l] = diff12 + 2.0f * diff34;
    o[2][l] = sum12 + 4.0f * sum34;
    o[3][l] = diff12 + 8.0f * diff34 + m[5][l];
  }
}

// One row of tiles (image n, channel block cb, tile row ty) into V.
template <int B>
SIMD_CLONES void TransformInputRow(const WinogradShape &s, const float *x, float *v, int64_t n,
                                   int64_t cb, int64_t ty) {
  alignas(64) float zero[B] = {};
  alignas(64) float t[kAlpha][kAlpha][B];  // B^T d: [row][column]
  const float *plane = x + (n * (s.c / B) + cb) * s.h * s.w * B;
  for (int64_t tx = 0; tx < s.tiles_w; ++tx) {
    for (int col = 0; col < kAlpha; ++col) {
      const int64_t iw = kTile * tx - 1 + col;
      const float *in[kAlpha];
      float *out[kAlpha];
      for (int r = 0; r < kAlpha; ++r) {
        const int64_t ih = kTile * ty - 1 + r;
        in[r] = ih >= 0 && ih < s.h && iw >= 0 && iw < s.w ? plane + (ih * s.w + iw) * B : zero;
        out[r] = t[r][col];
      }
      InputTransform<B>(in, out);
    }
    const int64_t tile = (n * s.tiles_h + ty) * s.tiles_w + tx;
    for (int r = 0; r < kAlpha; ++r) {
      const float *in[kAlpha];
      float *out[kAlpha];
      for (int col = 0; col < kAlpha; ++col) {
        in[col] = t[r][col];
        out[col] = v + (tile * kWinogradPositions + r * kAlpha + col) * s.c + cb * B;
      }
      InputTransform<B>(in, out);
    }
  }
}

// One row of tiles (image n, output block kb, tile row ty) of M into y: A^T m A, then + bias,
// + residual, activation.
template <int B>
SIMD_CLONES void TransformOutputRow(const WinogradShape &s, const float *m, const float *bias,
                                    const float *residual, int activation, float *y, int64_t n,
                                    int64_t kb, int64_t ty) {
  alignas(64) float q[kAlpha][kTile][B];  // m A: [row][column]
  alignas(64) float o[kTile][kTile][B];   // A^T m A
  alignas(64) float b[B];
  for (int l = 0; l < B; ++l) b[l] = bias ? bias[kb * B + l] : 0.0f;
  const int64_t offset = (n * (s.k / B) + kb) * s.h * s.w * B;
  float *plane = y + offset;
  const float *res = residual ? residual + offset : nullptr;
  const float upper = activation == 2 ? 6.0f : 3.4e38f;
  for (int64_t tx = 0; tx < s.tiles_w; ++tx) {
    const int64_t tile = (n * s.tiles_h + ty) * s.tiles_w + tx;
    for (int r = 0; r < kAlpha; ++r) {
      const float *in[kAlpha];
      float *out[kTile];
      for (int col = 0; col < kAlpha; ++col) {
        in[col] = m + (tile * kWinogradPositions + r * kAlpha + col) * s.k + kb * B;
      }
      for (int col = 0; col < kTile; ++col) out[col] = q[r][col];
      OutputTransform<B>(in, out);
    }
    for (int col = 0; col < kTile; ++col) {
      const float *in[kAlpha];
      float *out[kTile];
      for (int r = 0; r < kAlpha; ++r) in[r] = q[r][col];
      for (int r = 0; r < kTile; ++r) out[r] = o[r][col];
      OutputTransform<B>(in, out);
    }
    for (int r = 0; r < kTile; ++r) {
      const int64_t oh = kTile * ty + r;
      if (oh >= s.h) break;
      for (int col = 0; col < kTile; ++col) {
        const int64_t ow = kTile * tx + col;
        if (ow >= s.w) break;
        float *dst = plane + (oh * s.w + ow) * B;
        const float *add = res ? res + (oh * s.w + ow) * B : nullptr;
#pragma omp simd
        for (int l = 0; l < B; ++l) {
          float value = o[r][col][l] + b[l] + (add ? add[l] : 0.0f);
          if (activation) {
            value = value > 0.0f ? value : 0.0f;
            value = value < upper ? value : upper;
          }
          dst[l] = value;
        }
      }
    }
  }
}

// e = A d over four vectors (a row or column of a 4x4 tile of dy), A being (A^T)^T:
//   A = [1 0 0 0; 1 1 1 1; 1 -1 1 -1; 1 2 4 8; 1 -2 4 -8; 0 0 0 1].
template <int B>
inline void GradientTransform(const float *const d[kTile], float *const e[kAlpha]) {
#pragma omp simd
  for (int l = 0; l < B; ++l) {
    const float even = d[0][l] + d[2][l], odd = d[1][l] + d[3][l];
    const float even4 = d[0][l] + 4.0f * d[2][l], odd4 = 2.0f * d[1][l] + 8.0f * d[3][l];
    e[0][l] = d[0][l];
    e[1][l] = even + odd;
    e[2][l] = even - odd;
    e[3][l] = even4 + odd4;
    e[4][l] = even4 - odd4;
    e[5][l] = d[3][l];
  }
}

// One row of tiles (image n, output block kb, tile row ty) of dy into E: A dY A^T.
template <int B>
SIMD_CLONES void TransformGradientRow(const WinogradShape &s, const float *dy, float *e,
                                      int64_t n, int64_t kb, int64_t ty) {
  alignas(64) float zero[B] = {};
  alignas(64) float t[kTile][kAlpha][B];  // dY A^T: [row][column]
  const float *plane = dy + (n * (s.k / B) + kb) * s.h * s.w * B;
  for (int64_t tx = 0; tx < s.tiles_w; ++tx) {
    for (int r = 0; r < kTile; ++r) {
      const int64_t oh = kTile * ty + r;
      const float *in[kTile];
      float *out[kAlpha];
      for (int col = 0; col < kTile; ++col) {
        const int64_t ow = kTile * tx + col;
        in[col] = oh < s.h && ow < s.w ? plane + (oh * s.w + ow) * B : zero;
      }
      for (int col = 0; col < kAlpha; ++col) out[col] = t[r][col];
      GradientTransform<B>(in, out);
    }
    const int64_t tile = (n * s.tiles_h + ty) * s.tiles_w + tx;
    for (int col = 0; col < kAlpha; ++col) {
      const float *in[kTile];
      float *out[kAlpha];
      for (int r = 0; r < kTile; ++r) in[r] = t[r][col];
      for (int r = 0; r < kAlpha; ++r) {
        out[r] = e + (tile * kWinogradPositions + r * kAlpha + col) * s.k + kb * B;
      }
      GradientTransform<B>(in, out);
    }
  }
}

// row(n, block, ty) for every image, channel block (`blocks` of them) and tile row, in parallel.
template <typename Row>
void ForEachTileRow(const WinogradShape &s, int64_t blocks, const Row &row) {
  KernelParallelFor(static_cast<int>(s.n * blocks * s.tiles_h), [&](int i, int) {
    const int64_t ty = i % s.tiles_h, rest = i / s.tiles_h;
    row(rest / blocks, rest % blocks, ty);
  });
}

template <int B>
void Input(const WinogradShape &s, const float *x, float *v) {
  ForEachTileRow(s, s.c / B, [&](int64_t n, int64_t cb, int64_t ty) {
    TransformInputRow<B>(s, x, v, n, cb, ty);
  });
}

template <int B>
void Output(const WinogradShape &s, const float *m, const float *bias, const float *residual,
            int activation, float *y) {
  ForEachTileRow(s, s.k / B, [&](int64_t n, int64_t kb, int64_t ty) {
    TransformOutputRow<B>(s, m, bias, residual, activation, y, n, kb, ty);
  });
}

template <int B>
void Gradient(const WinogradShape &s, const float *dy, float *e) {
  ForEachTileRow(s, s.k / B, [&](int64_t n, int64_t kb, int64_t ty) {
    TransformGradientRow<B>(s, dy, e, n, kb, ty);
  });
}

// u = G g over three rows of n values (vectors over output channels):
//   G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1].
SIMD_CLONES void FilterTransform(const float *g0, const float *g1, const float *g2,
                                 float *const u[kAlpha], int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    u[0][k] = g0[k] / 4.0f;
    u[1][k] = -(g0[k] + g1[k] + g2[k]) / 6.0f;
    u[2][k] = -(g0[k] - g1[k] + g2[k]) / 6.0f;
    u[3][k] = g0[k] / 24.0f + g1[k] / 12.0f + g2[k] / 6.0f;
    u[4][k] = g0[k] / 24.0f - g1[k] / 12.0f + g2[k] / 6.0f;
    u[5][k] = g2[k];
  }
}

// g = G^T m over six rows of n values (vectors over output channels), G as FilterTransform's.
SIMD_CLONES void FilterGradientTransform(const float *const m[kAlpha], float *const g[3],
                                         int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const float sum12 = m[1][k] + m[2][k], diff21 = m[2][k] - m[1][k];
    const float sum34 = m[3][k] + m[4][k], diff34 = m[3][k] - m[4][k];
    g[0][k] = m[0][k] / 4.0f - sum12 / 6.0f + sum34 / 24.0f;
    g[1][k] = diff21 / 6.0f + diff34 / 12.0f;
    g[2][k] = (sum34 - sum12) / 6.0f + m[5][k];
  }
}

}  // namespace

WinogradShape MakeWinogradShape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int block) {
  return {n, c, h, w, k, block, (h + kTile - 1) / kTile, (w + kTile - 1) / kTile};
}

// U = G g G^T for every (c, k), one input channel at a time, vectorised over k.
void WinogradWeights(const WinogradShape &s, const float *w, float *u, bool flipped) {
  KernelParallelFor(static_cast<int>(s.c), [&](int c, int) {
    std::vector<float> g(9 * s.k), t(kAlpha * 3 * s.k);  // g[tap][k], t[row][column][k]
    for (int64_t k = 0; k < s.k; ++k) {
      for (int tap = 0; tap < 9; ++tap) {
        g[tap * s.k + k] = flipped ? w[(c * s.k + k) * 9 + 8 - tap] : w[(k * s.c + c) * 9 + tap];
      }
    }
    for (int col = 0; col < 3; ++col) {
      float *rows[kAlpha];
      for (int r = 0; r < kAlpha; ++r) rows[r] = &t[(r * 3 + col) * s.k];
      FilterTransform(&g[col * s.k], &g[(3 + col) * s.k], &g[(6 + col) * s.k], rows, s.k);
    }
    for (int r = 0; r < kAlpha; ++r) {
      float *out[kAlpha];
      for (int col = 0; col < kAlpha; ++col) out[col] = u + ((r * kAlpha + col) * s.c + c) * s.k;
      FilterTransform(&t[r * 3 * s.k], &t[(r * 3 + 1) * s.k], &t[(r * 3 + 2) * s.k], out, s.k);
    }
  });
}

void WinogradInput(const WinogradShape &s, const float *x, float *v) {
  s.block == 16 ? Input<16>(s, x, v) : Input<8>(s, x, v);
}

void WinogradOutput(const WinogradShape &s, const float *m, const float *bias,
                    const float *residual, int activation, float *y) {
  s.block == 16 ? Output<16>(s, m, bias, residual, activation, y)
                : Output<8>(s, m, bias, residual, activation, y);
}

void WinogradOutputGradient(const WinogradShape &s, const float *dy, float *e) {
  s.block == 16 ? Gradient<16>(s, dy, e) : Gradient<8>(s, dy, e);
}

// dw = G^T dW G for every (c, k), one input channel at a time, vectorised over k.
void WinogradWeightGradient(const WinogradShape &s, const float *dw_hat, float *dw) {
  KernelParallelFor(static_cast<int>(s.c), [&](int c, int) {
    std::vector<float> t(3 * kAlpha * s.k), o(9 * s.k);  // t[row][column][k], o[tap][k]
    for (int col = 0; col < kAlpha; ++col) {
      const float *in[kAlpha];
      float *out[3];
      for (int r = 0; r < kAlpha; ++r) in[r] = dw_hat + ((r * kAlpha + col) * s.c + c) * s.k;
      for (int r = 0; r < 3; ++r) out[r] = &t[(r * kAlpha + col) * s.k];
      FilterGradientTransform(in, out, s.k);
    }
    for (int r = 0; r < 3; ++r) {
      const float *in[kAlpha];
      float *out[3];
      for (int col = 0; col < kAlpha; ++col) in[col] = &t[(r * kAlpha + col) * s.k];
      for (int col = 0; col < 3; ++col) out[col] = &o[(r * 3 + col) * s.k];
      FilterGradientTransform(in, out, s.k);
    }
    for (int64_t k = 0; k < s.k; ++k) {
      for (int tap = 0; tap < 9; ++tap) dw[(k * s.c + c) * 9 + tap] = o[tap * s.k + k];
    }
  });
}
