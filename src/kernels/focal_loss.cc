// Sigmoid focal loss over (B, A, C) logits and its gradient, as two MindSpore Custom AOT ops
// for the CPU: the same formula as src/loss.py's sigmoid_focal_loss, in one pass over the
// 8732 x 81 scores per image instead of about fifteen elementwise ops and their gradients.
//
// For logit x, target t (1 in the column of the anchor's label, else 0), p = sigmoid(x):
//   p_t = t p + (1 - t)(1 - p),  w = t alpha + (1 - t)(1 - alpha),
//   bce = max(x, 0) - x t + log1p(exp(-|x|)),  loss = (1 - p_t)^gamma w bce,
//   d loss / dx = w [(1 - p_t)^gamma (p - t) - gamma (1 - p_t)^(gamma - 1) (2t - 1) p (1 - p) bce].
// Anchors labelled -1 (ignore regions) contribute nothing. Work is split into fixed chunks and
// the partial sums are added in chunk order, so results do not depend on thread timing.
// Built with -ffast-math (build.sh) so that a row's exp / log1p run as glibc's vector
// functions (libmvec); each row is one vector loop.
#include <cmath>
#include <cstdint>
#include <vector>

#include "threads.h"
#include "simd.h"


namespace {

// Runs fn(begin, end, chunk) over [0, anchors) in `chunks` fixed pieces on the kernels' pool.
template <typename Fn>
void ForChunks(int64_t anchors, int chunks, Fn fn) {
  KernelParallelFor(chunks, [&](int c, int count) {
    fn(anchors * c / count, anchors * (c + 1) / count, c);
  });
}

constexpr int kChunks = 64;

// One score's terms: p, w, bce, (1 - p_t)^gamma and gamma (1 - p_t)^(gamma - 1) (exact for
// the usual gamma = 2); inlined into the vector loops below.
struct Terms {
  float p, w, bce, modulator, slope;
};

inline Terms Compute(float x, float t, float gamma, float alpha) {
  const float e = std::exp(-std::fabs(x));
  const float p = (x >= 0.0f ? 1.0f : e) / (1.0f + e);
  const float complement = 1.0f - (t * p + (1.0f - t) * (1.0f - p));
  Terms k{p, t * alpha + (1.0f - t) * (1.0f - alpha),
          (x > 0.0f ? x : 0.0f) - x * t + std::log1p(e), 0.0f, 0.0f};
  if (gamma == 2.0f) {
    k.modulator = complement * complement;
    k.slope = 2.0f * complement;
  } else {
    k.modulator = std::pow(complement, gamma);
    k.slope = gamma * std::pow(complement, gamma - 1.0f);
  }
  return k;
}

// sum over one anchor's classes of the loss; label is the class with t = 1.
SIMD_CLONES float RowLoss(const float *x, int64_t classes, int32_t label, float gamma,
                          float alpha) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < classes; ++c) {
    const Terms k = Compute(x[c], c == label ? 1.0f : 0.0f, gamma, alpha);
    sum += k.modulator * k.w * k.bce;
  }
  return sum;
}

SIMD_CLONES void RowGradient(const float *x, float *out, int64_t classes, int32_t label,
                             float gamma, float alpha, float scale) {
#pragma omp simd
  for (int64_t c = 0; c < classes; ++c) {
    const float t = c == label ? 1.0f : 0.0f;
    const Terms k = Compute(x[c], t, gamma, alpha);
    out[c] = scale * k.w *
             (k.modulator * (k.p - t) - k.slope * (2.0f * t - 1.0f) * k.p * (1.0f - k.p) * k.bce);
  }
}

// The op's inputs: logits (B, A, C) f32, labels (B, A) int32, settings [gamma, alpha] f32.
struct Inputs {
  const float *logits;
  const int32_t *labels;
  float gamma, alpha;
  int64_t classes, anchors;
};

Inputs ReadInputs(void **params, const int *ndims, int64_t **shapes) {
  const float *settings = static_cast<const float *>(params[2]);
  return {static_cast<const float *>(params[0]), static_cast<const int32_t *>(params[1]),
          settings[0], settings[1], shapes[0][ndims[0] - 1], shapes[1][0] * shapes[1][1]};
}

}  // namespace

extern "C" {

// params: logits (B, A, C) f32, labels (B, A) int32, settings [gamma, alpha] f32, loss (1,) f32
int FocalLossSum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                 void *stream, void *extra) {
  const Inputs in = ReadInputs(params, ndims, shapes);
  std::vector<double> partial(kChunks, 0.0);
  ForChunks(in.anchors, kChunks, [&](int64_t begin, int64_t end, int chunk) {
    double sum = 0.0;
    for (int64_t a = begin; a < end; ++a) {
      if (in.labels[a] < 0) continue;
      sum += RowLoss(in.logits + a * in.classes, in.classes, in.labels[a], in.gamma, in.alpha);
    }
    partial[chunk] = sum;
  });
  double total = 0.0;
  for (double value : partial) total += value;
  *static_cast<float *>(params[3]) = static_cast<float>(total);
  return 0;
}

// params: logits, labels, settings, dloss (1,) f32, dlogits (B, A, C) f32
int FocalLossGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                  void *stream, void *extra) {
  const Inputs in = ReadInputs(params, ndims, shapes);
  const float scale = *static_cast<const float *>(params[3]);
  float *grad = static_cast<float *>(params[4]);
  ForChunks(in.anchors, kChunks, [&](int64_t begin, int64_t end, int) {
    for (int64_t a = begin; a < end; ++a) {
      float *out = grad + a * in.classes;
      if (in.labels[a] < 0) {
        for (int64_t c = 0; c < in.classes; ++c) out[c] = 0.0f;
        continue;
      }
      RowGradient(in.logits + a * in.classes, out, in.classes, in.labels[a], in.gamma, in.alpha,
                  scale);
    }
  });
  return 0;
}

}  // extern "C"
