// Training-mode BatchNorm over NCHW float32 with its activation (and a residual input) fused in,
// as MindSpore Custom AOT ops for the CPU, with its backward op.
//
// MindSpore's CPU BatchNorm runs oneDNN's plain-layout kernels (its backward is several times
// slower than PyTorch's on the same shapes: docs/performance.md), and ReLU, its gradient and the residual add are
// three more passes over the activations. Here, per channel (all of a channel's values fit
// in the L2 cache at this model's sizes), forward is: mean, variance (two-pass), then
//   y = act(gamma (x - mean) / sqrt(var + eps) + beta [+ residual]),
// act: 0 none, 1 ReLU, 2 ReLU6. Backward, with g = dy masked where the activation was flat
// (y <= 0, or y >= 6 for ReLU6; MindSpore's ReluGrad / ReLU6Grad convention):
//   dbeta = sum g, dgamma = sum g xhat, dx = gamma invstd (g - dbeta / M - xhat dgamma / M),
//   dresidual = g, with xhat = (x - mean) invstd and M = N H W.
// Each channel is computed by one thread in a fixed order: results do not depend on timing.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "threads.h"
#include "simd.h"


namespace {

struct Layout {
  int64_t batch, channels, plane;  // N, C, H * W
  const float *Row(const float *base, int64_t n, int64_t c) const {
    return base + (n * channels + c) * plane;
  }
  float *Row(float *base, int64_t n, int64_t c) const { return base + (n * channels + c) * plane; }
};

Layout ReadLayout(const int64_t *shape) { return {shape[0], shape[1], shape[2] * shape[3]}; }


// (std::fmin / fmax keep NaN rules that stop GCC from vectorising them.)
inline float Clamp(float v, float lower, float upper) {
  v = v > lower ? v : lower;
  return v < upper ? v : upper;
}

SIMD_CLONES float Sum(const float *x, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  return sum;
}

SIMD_CLONES float SquaredDeviations(const float *x, int64_t n, float mean) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += (x[i] - mean) * (x[i] - mean);
  return sum;
}

SIMD_CLONES void NormalizeActivate(const float *x, const float *residual, float *y, int64_t n,
                                   float scale, float shift, int activation) {
  const float upper = activation == 2 ? 6.0f : INFINITY;
  if (residual) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift + residual[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift;
  }
  if (activation == 0) return;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = Clamp(y[i], 0.0f, upper);
}

inline float Pass(float y, float upper) { return y > 0.0f && y < upper ? 1.0f : 0.0f; }

// sum g and sum g (x - mean) over one row.
SIMD_CLONES void GradientSums(const float *dy, const float *y, const float *x, int64_t n,
                              float mean, int activation, float *sum_g, float *sum_gx) {
  float sg = 0.0f, sgx = 0.0f;
  if (activation == 0) {
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t i = 0; i < n; ++i) {
      sg += dy[i];
      sgx += dy[i] * (x[i] - mean);
    }
  } else {
    const float upper = activation == 2 ? 6.0f : INFINITY;
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t i = 0; i < n; ++i) {
      const float g = dy[i] * Pass(y[i], upper);
      sg += g;
      sgx += g * (x[i] - mean);
    }
  }
  *sum_g = sg;
  *sum_gx = sgx;
}

// dx = k g + a x + b; dresidual = g (when asked for).
SIMD_CLONES void InputGradient(const float *dy, const float *y, const float *x, float *dx,
                               float *dresidual, int64_t n, int activation, float k, float a,
                               float b) {
  const float upper = activation == 2 ? 6.0f : INFINITY;
  if (activation == 0) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dx[i] = k * dy[i] + a * x[i] + b;
    if (dresidual) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dresidual[i] = dy[i];
    }
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = k * dy[i] * Pass(y[i], upper) + a * x[i] + b;
  if (dresidual) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dresidual[i] = dy[i] * Pass(y[i], upper);
  }
}

// Channels B at a time in oneDNN's blocked layout (aBcd16b or aBcd8b: N, C/B, H, W, B; B is
// the vector width in floats of the ISA oneDNN runs: 16 with AVX-512, 8 with AVX2), where one
// position's B channels are one vector: sums and updates per lane.
constexpr int kMaxBlock = 16;

template <int kBlock>
SIMD_CLONES void SumLanes(const float *x, int64_t positions, const float *mean, double *out) {
  float sum[kBlock] = {};
  for (int64_t p = 0; p < positions; ++p) {
#pragma omp simd
    for (int j = 0; j < kBlock; ++j) {
      const float v = mean ? (x[p * kBlock + j] - mean[j]) * (x[p * kBlock + j] - mean[j])
                           : x[p * kBlock + j];
      sum[j] += v;
    }
  }
  for (int j = 0; j < kBlock; ++j) out[j] += sum[j];
}

template <int kBlock>
SIMD_CLONES void NormalizeActivateLanes(const float *x, const float *residual, float *y,
                                        int64_t positions, const float *scale,
                                        const float *shift, int activation) {
  const float upper = activation == 2 ? 6.0f : INFINITY;
  const float lower = activation == 0 ? -INFINITY : 0.0f;
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t o = p * kBlock;
#pragma omp simd
    for (int j = 0; j < kBlock; ++j) {
      const float v = x[o + j] * scale[j] + shift[j] + (residual ? residual[o + j] : 0.0f);
      y[o + j] = Clamp(v, lower, upper);
    }
  }
}

template <int kBlock>
SIMD_CLONES void GradientSumsLanes(const float *dy, const float *y, const float *x,
                                   int64_t positions, const float *mean, int activation,
                                   double *sum_g, double *sum_gx) {
  const float upper = activation == 2 ? 6.0f : INFINITY;
  float sg[kBlock] = {}, sgx[kBlock] = {};
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t o = p * kBlock;
#pragma omp simd
    for (int j = 0; j < kBlock; ++j) {
      const float g = activation == 0 ? dy[o + j] : dy[o + j] * Pass(y[o + j], upper);
      sg[j] += g;
      sgx[j] += g * (x[o + j] - mean[j]);
    }
  }
  for (int j = 0; j < kBlock; ++j) {
    sum_g[j] += sg[j];
    sum_gx[j] += sgx[j];
  }
}

template <int kBlock>
SIMD_CLONES void InputGradientLanes(const float *dy, const float *y, const float *x, float *dx,
                                    float *dresidual, int64_t positions, int activation,
                                    const float *k, const float *a, const float *b) {
  const float upper = activation == 2 ? 6.0f : INFINITY;
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t o = p * kBlock;
#pragma omp simd
    for (int j = 0; j < kBlock; ++j) {
      const float g = activation == 0 ? dy[o + j] : dy[o + j] * Pass(y[o + j], upper);
      dx[o + j] = k[j] * g + a[j] * x[o + j] + b[j];
      if (dresidual) dresidual[o + j] = g;
    }
  }
}

// Calls fn(first, count) for channel groups of `width` channels (1, or the block in the
// blocked layout), split into contiguous ranges over the pool.
template <typename Fn>
void ForGroups(int64_t channels, int64_t width, Fn fn) {
  const int64_t groups = channels / width;
  const int parts = static_cast<int>(std::min<int64_t>(groups, KernelThreads()));
  KernelParallelFor(parts, [&](int part, int count) {
    for (int64_t g = groups * part / count; g < groups * (part + 1) / count; ++g) {
      fn(g * width, width);
    }
  });
}

// The op's settings tensor: [eps, activation, block (0: NCHW, else the blocked layout's 8 or
// 16), use the running statistics, momentum (the batch's weight in the running statistics)].
struct Options {
  float eps;
  int activation, block;
  bool running;
  float momentum;
};

Options ReadOptions(const void *data) {
  const float *v = static_cast<const float *>(data);
  return {v[0], static_cast<int>(v[1]), static_cast<int>(v[2]), v[3] != 0.0f, v[4]};
}

// Statistics per channel (batch ones, or the running ones given) -> mean, invstd and the
// variance (the batch's unbiased one: what the running statistics take in). B: the block (1:
// NCHW), here and below.
template <int B>
void Statistics(const Layout &l, const Options &o, const float *x, int64_t c0, int64_t width,
                const float *running_mean, const float *running_var, float *mean, float *var,
                float *invstd) {
  const double count = static_cast<double>(l.batch * l.plane);
  if (o.running) {
    for (int64_t j = 0; j < width; ++j) {
      mean[j] = running_mean[c0 + j];
      var[j] = running_var[c0 + j];
      invstd[j] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[j]) + o.eps));
    }
    return;
  }
  double sums[kMaxBlock] = {}, squares[kMaxBlock] = {};
  if constexpr (B > 1) {
    for (int64_t n = 0; n < l.batch; ++n) SumLanes<B>(l.Row(x, n, c0), l.plane, nullptr, sums);
  } else {
    for (int64_t n = 0; n < l.batch; ++n) sums[0] += Sum(l.Row(x, n, c0), l.plane);
  }
  for (int64_t j = 0; j < width; ++j) mean[j] = static_cast<float>(sums[j] / count);
  if constexpr (B > 1) {
    for (int64_t n = 0; n < l.batch; ++n) SumLanes<B>(l.Row(x, n, c0), l.plane, mean, squares);
  } else {
    for (int64_t n = 0; n < l.batch; ++n) {
      squares[0] += SquaredDeviations(l.Row(x, n, c0), l.plane, mean[0]);
    }
  }
  for (int64_t j = 0; j < width; ++j) {
    invstd[j] = static_cast<float>(1.0 / std::sqrt(squares[j] / count + o.eps));
    var[j] = static_cast<float>(count > 1 ? squares[j] / (count - 1) : squares[j] / count);
  }
}

// params: x, [residual,] gamma, beta, running_mean, running_var, settings; outputs y, mean,
// invstd (for the backward op), the updated running mean and variance (nn.BatchNorm2d's rule:
// (1 - momentum) old + momentum batch, unbiased variance; unchanged with running statistics).
// In the blocked layout a channel group's row is (n, c0 / B): Row() with channels / B.
template <int B>
int ForwardIn(int nparam, void **params, int64_t **shapes, const Options &o) {
  const bool has_residual = nparam == 12;
  const int v0 = has_residual ? 2 : 1;  // first per-channel vector
  const Layout l = ReadLayout(shapes[0]);
  const float *x = static_cast<const float *>(params[0]);
  const float *residual = has_residual ? static_cast<const float *>(params[1]) : nullptr;
  const float *gamma = static_cast<const float *>(params[v0]);
  const float *beta = static_cast<const float *>(params[v0 + 1]);
  const float *running_mean = static_cast<const float *>(params[v0 + 2]);
  const float *running_var = static_cast<const float *>(params[v0 + 3]);
  float *y = static_cast<float *>(params[nparam - 5]);
  float *mean_out = static_cast<float *>(params[nparam - 4]);
  float *invstd_out = static_cast<float *>(params[nparam - 3]);
  float *new_running_mean = static_cast<float *>(params[nparam - 2]);
  float *new_running_var = static_cast<float *>(params[nparam - 1]);
  const float keep = o.running ? 1.0f : 1.0f - o.momentum, take = 1.0f - keep;
  ForGroups(l.channels, B, [&](int64_t c0, int64_t width) {
    float *mean = mean_out + c0, *invstd = invstd_out + c0, var[kMaxBlock];
    Statistics<B>(l, o, x, c0, width, running_mean, running_var, mean, var, invstd);
    float scale[kMaxBlock], shift[kMaxBlock];
    for (int64_t j = 0; j < width; ++j) {
      scale[j] = gamma[c0 + j] * invstd[j];
      shift[j] = beta[c0 + j] - mean[j] * scale[j];
      new_running_mean[c0 + j] = keep * running_mean[c0 + j] + take * mean[j];
      new_running_var[c0 + j] = keep * running_var[c0 + j] + take * var[j];
    }
    for (int64_t n = 0; n < l.batch; ++n) {
      const float *r = residual ? l.Row(residual, n, c0) : nullptr;
      if constexpr (B > 1) {
        NormalizeActivateLanes<B>(l.Row(x, n, c0), r, l.Row(y, n, c0), l.plane, scale, shift,
                                  o.activation);
      } else {
        NormalizeActivate(l.Row(x, n, c0), r, l.Row(y, n, c0), l.plane, scale[0], shift[0],
                          o.activation);
      }
    }
  });
  return 0;
}

// params: dy, x, y, gamma, mean, invstd, settings; outputs dx, dgamma, dbeta [, dresidual].
// With running statistics, mean and invstd are constants: dx = gamma invstd g.
template <int B>
int BackwardIn(int nparam, void **params, int64_t **shapes, const Options &o) {
  const bool has_residual = nparam == 11;
  const Layout l = ReadLayout(shapes[0]);
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *y = static_cast<const float *>(params[2]);
  const float *gamma = static_cast<const float *>(params[3]);
  const float *mean = static_cast<const float *>(params[4]);
  const float *invstd = static_cast<const float *>(params[5]);
  float *dx = static_cast<float *>(params[7]);
  float *dgamma = static_cast<float *>(params[8]);
  float *dbeta = static_cast<float *>(params[9]);
  float *dresidual = has_residual ? static_cast<float *>(params[10]) : nullptr;
  const double count = static_cast<double>(l.batch * l.plane);
  const int activation = o.activation;
  ForGroups(l.channels, B, [&](int64_t c0, int64_t width) {
    double sum_g[kMaxBlock] = {}, sum_gx[kMaxBlock] = {};
    for (int64_t n = 0; n < l.batch; ++n) {
      if constexpr (B > 1) {
        GradientSumsLanes<B>(l.Row(dy, n, c0), l.Row(y, n, c0), l.Row(x, n, c0), l.plane,
                             mean + c0, activation, sum_g, sum_gx);
      } else {
        float row_g, row_gx;
        GradientSums(l.Row(dy, n, c0), l.Row(y, n, c0), l.Row(x, n, c0), l.plane, mean[c0],
                     activation, &row_g, &row_gx);
        sum_g[0] += row_g;
        sum_gx[0] += row_gx;
      }
    }
    float k[kMaxBlock], a[kMaxBlock], b[kMaxBlock];
    for (int64_t j = 0; j < width; ++j) {
      const int64_t c = c0 + j;
      const double sum_gxhat = sum_gx[j] * invstd[c];
      const double scale = static_cast<double>(gamma[c]) * invstd[c];
      const double slope = o.running ? 0.0 : -scale * sum_gxhat * invstd[c] / count;
      k[j] = static_cast<float>(scale);
      a[j] = static_cast<float>(slope);
      b[j] = static_cast<float>(o.running ? 0.0 : -scale * sum_g[j] / count - slope * mean[c]);
      dgamma[c] = static_cast<float>(sum_gxhat);
      dbeta[c] = static_cast<float>(sum_g[j]);
    }
    for (int64_t n = 0; n < l.batch; ++n) {
      float *dr = dresidual ? l.Row(dresidual, n, c0) : nullptr;
      if constexpr (B > 1) {
        InputGradientLanes<B>(l.Row(dy, n, c0), l.Row(y, n, c0), l.Row(x, n, c0),
                              l.Row(dx, n, c0), dr, l.plane, activation, k, a, b);
      } else {
        InputGradient(l.Row(dy, n, c0), l.Row(y, n, c0), l.Row(x, n, c0), l.Row(dx, n, c0), dr,
                      l.plane, activation, k[0], a[0], b[0]);
      }
    }
  });
  return 0;
}

// The op for the block the settings name (an unknown one fails the op).
int Forward(int nparam, void **params, int64_t **shapes) {
  const Options o = ReadOptions(params[nparam == 12 ? 6 : 5]);
  switch (o.block) {
    case 0: return ForwardIn<1>(nparam, params, shapes, o);
    case 8: return ForwardIn<8>(nparam, params, shapes, o);
    case 16: return ForwardIn<16>(nparam, params, shapes, o);
    default: return 1;
  }
}
int Backward(int nparam, void **params, int64_t **shapes) {
  const Options o = ReadOptions(params[6]);
  switch (o.block) {
    case 0: return BackwardIn<1>(nparam, params, shapes, o);
    case 8: return BackwardIn<8>(nparam, params, shapes, o);
    case 16: return BackwardIn<16>(nparam, params, shapes, o);
    default: return 1;
  }
}

}  // namespace

extern "C" {

// MindSpore Custom AOT entry points (separate names with and without the residual input:
// MindSpore keys some Custom op information by function).
int BatchNormActForward(int nparam, void **params, int *, int64_t **shapes, const char **,
                        void *, void *) {
  return Forward(nparam, params, shapes);
}
int BatchNormAddActForward(int nparam, void **params, int *, int64_t **shapes, const char **,
                           void *, void *) {
  return Forward(nparam, params, shapes);
}
int BatchNormActBackward(int nparam, void **params, int *, int64_t **shapes, const char **,
                         void *, void *) {
  return Backward(nparam, params, shapes);
}
int BatchNormAddActBackward(int nparam, void **params, int *, int64_t **shapes, const char **,
                            void *, void *) {
  return Backward(nparam, params, shapes);
}

}  // extern "C"
