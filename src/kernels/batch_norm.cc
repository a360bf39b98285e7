// Training-mode BatchNorm over NCHW float32 with its activation (and a residual input) fused in,
// as MindSpore Custom AOT ops for the CPU, with its backward op.
//
// MindSpore's CPU BatchNorm runs oneDNN's plain-layout kernels (its backward is about 3.5x
// slower than PyTorch's on the same shapes), and ReLU, its gradient and the residual add are
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

#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace {

struct Layout {
  int64_t batch, channels, plane;  // N, C, H * W
  const float *Row(const float *base, int64_t n, int64_t c) const {
    return base + (n * channels + c) * plane;
  }
  float *Row(float *base, int64_t n, int64_t c) const { return base + (n * channels + c) * plane; }
};

Layout ReadLayout(const int64_t *shape) { return {shape[0], shape[1], shape[2] * shape[3]}; }

struct Settings {
  float eps;
  int activation;
};

Settings ReadSettings(const void *data) {
  const float *s = static_cast<const float *>(data);
  return {s[0], static_cast<int>(s[1])};
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
  for (int64_t i = 0; i < n; ++i) y[i] = std::fmin(std::fmax(y[i], 0.0f), upper);
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

// Calls fn(c) for each channel, the channels split into contiguous ranges over the pool.
template <typename Fn>
void ForChannels(int64_t channels, Fn fn) {
  const int parts = static_cast<int>(std::min<int64_t>(channels, KernelThreads()));
  KernelParallelFor(parts, [&](int part, int count) {
    for (int64_t c = channels * part / count; c < channels * (part + 1) / count; ++c) fn(c);
  });
}

// params: x, [residual,] gamma, beta, settings [eps, activation];
// outputs y, mean, variance (unbiased, for the running statistics), invstd.
int Forward(int nparam, void **params, int64_t **shapes) {
  const bool has_residual = nparam == 9;
  const int first_vector = has_residual ? 2 : 1;
  const Layout l = ReadLayout(shapes[0]);
  const Settings s = ReadSettings(params[first_vector + 2]);
  const float *x = static_cast<const float *>(params[0]);
  const float *residual = has_residual ? static_cast<const float *>(params[1]) : nullptr;
  const float *gamma = static_cast<const float *>(params[first_vector]);
  const float *beta = static_cast<const float *>(params[first_vector + 1]);
  float *y = static_cast<float *>(params[nparam - 4]);
  float *mean_out = static_cast<float *>(params[nparam - 3]);
  float *var_out = static_cast<float *>(params[nparam - 2]);
  float *invstd_out = static_cast<float *>(params[nparam - 1]);
  const double count = static_cast<double>(l.batch * l.plane);
  ForChannels(l.channels, [&](int64_t c) {
    double sum = 0.0;
    for (int64_t n = 0; n < l.batch; ++n) sum += Sum(l.Row(x, n, c), l.plane);
    const float mean = static_cast<float>(sum / count);
    double squares = 0.0;
    for (int64_t n = 0; n < l.batch; ++n) {
      squares += SquaredDeviations(l.Row(x, n, c), l.plane, mean);
    }
    const double var = squares / count;
    const float invstd = static_cast<float>(1.0 / std::sqrt(var + s.eps));
    const float scale = gamma[c] * invstd, shift = beta[c] - mean * scale;
    for (int64_t n = 0; n < l.batch; ++n) {
      NormalizeActivate(l.Row(x, n, c), residual ? l.Row(residual, n, c) : nullptr,
                        l.Row(y, n, c), l.plane, scale, shift, s.activation);
    }
    mean_out[c] = mean;
    var_out[c] = static_cast<float>(count > 1 ? squares / (count - 1) : var);
    invstd_out[c] = invstd;
  });
  return 0;
}

// params: dy, x, y, gamma, mean, invstd, settings; outputs dx, dgamma, dbeta [, dresidual].
int Backward(int nparam, void **params, int64_t **shapes) {
  const bool has_residual = nparam == 11;
  const Layout l = ReadLayout(shapes[0]);
  const Settings s = ReadSettings(params[6]);
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
  ForChannels(l.channels, [&](int64_t c) {
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t n = 0; n < l.batch; ++n) {
      float row_g, row_gx;
      GradientSums(l.Row(dy, n, c), l.Row(y, n, c), l.Row(x, n, c), l.plane, mean[c],
                   s.activation, &row_g, &row_gx);
      sum_g += row_g;
      sum_gx += row_gx;
    }
    const double sum_gxhat = sum_gx * invstd[c];
    const double k = static_cast<double>(gamma[c]) * invstd[c];
    const double a = -k * sum_gxhat * invstd[c] / count;
    const double b = -k * sum_g / count - a * mean[c];
    for (int64_t n = 0; n < l.batch; ++n) {
      InputGradient(l.Row(dy, n, c), l.Row(y, n, c), l.Row(x, n, c), l.Row(dx, n, c),
                    dresidual ? l.Row(dresidual, n, c) : nullptr, l.plane, s.activation,
                    static_cast<float>(k), static_cast<float>(a), static_cast<float>(b));
    }
    dgamma[c] = static_cast<float>(sum_gxhat);
    dbeta[c] = static_cast<float>(sum_g);
  });
  return 0;
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
