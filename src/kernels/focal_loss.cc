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
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

#include "threads.h"

namespace {

// Runs fn(begin, end, chunk) over [0, anchors) in `chunks` fixed pieces on up to Threads().
template <typename Fn>
void ForChunks(int64_t anchors, int chunks, Fn fn) {
  const int threads = std::min(KernelThreads(), chunks);
  auto run = [&](int first) {
    for (int c = first; c < chunks; c += threads) {
      fn(anchors * c / chunks, anchors * (c + 1) / chunks, c);
    }
  };
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) workers.emplace_back(run, t);
  run(0);
  for (auto &worker : workers) worker.join();
}

struct Terms {
  float p, pt_complement, w, bce, t;
};

inline Terms Compute(float x, float t, float alpha) {
  const float p = 1.0f / (1.0f + std::exp(-x));
  const float p_t = t * p + (1.0f - t) * (1.0f - p);
  const float bce = std::max(x, 0.0f) - x * t + std::log1p(std::exp(-std::fabs(x)));
  return {p, 1.0f - p_t, t * alpha + (1.0f - t) * (1.0f - alpha), bce, t};
}

constexpr int kChunks = 64;

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
  (void)nparam;
  (void)dtypes;
  (void)stream;
  (void)extra;
  const Inputs in = ReadInputs(params, ndims, shapes);
  const float *logits = in.logits;
  const int32_t *labels = in.labels;
  const float gamma = in.gamma, alpha = in.alpha;
  const int64_t classes = in.classes, anchors = in.anchors;
  std::vector<double> partial(kChunks, 0.0);
  ForChunks(anchors, kChunks, [&](int64_t begin, int64_t end, int chunk) {
    double sum = 0.0;
    for (int64_t a = begin; a < end; ++a) {
      const int32_t label = labels[a];
      if (label < 0) continue;
      const float *row = logits + a * classes;
      for (int64_t c = 0; c < classes; ++c) {
        const Terms k = Compute(row[c], c == label ? 1.0f : 0.0f, alpha);
        sum += std::pow(k.pt_complement, gamma) * k.w * k.bce;
      }
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
  (void)nparam;
  (void)dtypes;
  (void)stream;
  (void)extra;
  const Inputs in = ReadInputs(params, ndims, shapes);
  const float *logits = in.logits;
  const int32_t *labels = in.labels;
  const float gamma = in.gamma, alpha = in.alpha;
  const int64_t classes = in.classes, anchors = in.anchors;
  const float scale = *static_cast<const float *>(params[3]);
  float *grad = static_cast<float *>(params[4]);
  ForChunks(anchors, kChunks, [&](int64_t begin, int64_t end, int) {
    for (int64_t a = begin; a < end; ++a) {
      const int32_t label = labels[a];
      const float *row = logits + a * classes;
      float *out = grad + a * classes;
      if (label < 0) {
        std::fill(out, out + classes, 0.0f);
        continue;
      }
      for (int64_t c = 0; c < classes; ++c) {
        const Terms k = Compute(row[c], c == label ? 1.0f : 0.0f, alpha);
        const float modulator = std::pow(k.pt_complement, gamma);
        const float modulator_grad =
            gamma * std::pow(k.pt_complement, gamma - 1.0f) * (2.0f * k.t - 1.0f) * k.p *
            (1.0f - k.p);
        out[c] = scale * k.w * (modulator * (k.p - k.t) - modulator_grad * k.bce);
      }
    }
  });
  return 0;
}

}  // extern "C"
