// Max pooling over our blocked activation layout (aBcd8b / aBcd16b: N, C/B, H, W, B) with
// TensorFlow's "same" padding (MindSpore's pad_mode 'same': out = ceil(in / stride), the
// padding split with the extra row and column at the bottom and right, padded values never
// chosen), as MindSpore Custom AOT ops for the CPU: forward, and backward, which adds each
// output's gradient at the position of its maximum.
//
// MindSpore's own MaxPool reads NCHW only and oneDNN then runs its generic simple_nchw kernel
// for it; here one position's B channels are one vector. Each (image, channel block) plane is
// computed by one thread, so the backward's additions (windows overlap) never race and results
// do not depend on timing. Ties keep the first maximum in window order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.h"
#include "threads.h"

namespace {

struct Pool {
  int64_t planes, h, w, oh, ow, kernel, stride, pad_t, pad_l;
  int block;
  // The input rows (or columns) [First, Last) of output row (column) o's window.
  int64_t First(int64_t o, int64_t pad) const { return std::max<int64_t>(o * stride - pad, 0); }
  int64_t Last(int64_t o, int64_t pad, int64_t size) const {
    return std::min<int64_t>(o * stride - pad + kernel, size);
  }
};

// x (N, C, H, W) in the blocked layout; settings int32 [kernel, stride, block].
Pool ReadPool(const int64_t *x, const int64_t *y, const void *settings) {
  const int32_t *s = static_cast<const int32_t *>(settings);
  Pool p;
  p.kernel = s[0];
  p.stride = s[1];
  p.block = s[2];
  p.planes = x[0] * (x[1] / p.block);
  p.h = x[2];
  p.w = x[3];
  p.oh = y[2];
  p.ow = y[3];
  const int64_t pad_h = std::max<int64_t>((p.oh - 1) * p.stride + p.kernel - p.h, 0);
  const int64_t pad_w = std::max<int64_t>((p.ow - 1) * p.stride + p.kernel - p.w, 0);
  p.pad_t = pad_h / 2;
  p.pad_l = pad_w / 2;
  return p;
}

// One plane of y.
template <int B>
SIMD_CLONES void ForwardPlane(const float *x, float *y, const Pool &p) {
  for (int64_t oh = 0; oh < p.oh; ++oh) {
    const int64_t h0 = p.First(oh, p.pad_t), h1 = p.Last(oh, p.pad_t, p.h);
    for (int64_t ow = 0; ow < p.ow; ++ow) {
      const int64_t w0 = p.First(ow, p.pad_l), w1 = p.Last(ow, p.pad_l, p.w);
      float best[B];
      for (int j = 0; j < B; ++j) best[j] = -INFINITY;
      for (int64_t ih = h0; ih < h1; ++ih) {
        for (int64_t iw = w0; iw < w1; ++iw) {
          const float *v = x + (ih * p.w + iw) * B;
#pragma omp simd
          for (int j = 0; j < B; ++j) best[j] = v[j] > best[j] ? v[j] : best[j];
        }
      }
      float *out = y + (oh * p.ow + ow) * B;
      for (int j = 0; j < B; ++j) out[j] = best[j];
    }
  }
}

// One plane of dx: each output's gradient goes to the first position of its window holding
// the maximum (found again from x and y: no index tensor is kept between the two ops).
template <int B>
SIMD_CLONES void BackwardPlane(const float *dy, const float *x, const float *y, float *dx,
                               const Pool &p) {
  std::memset(dx, 0, sizeof(float) * p.h * p.w * B);
  for (int64_t oh = 0; oh < p.oh; ++oh) {
    const int64_t h0 = p.First(oh, p.pad_t), h1 = p.Last(oh, p.pad_t, p.h);
    for (int64_t ow = 0; ow < p.ow; ++ow) {
      const int64_t w0 = p.First(ow, p.pad_l), w1 = p.Last(ow, p.pad_l, p.w);
      const int64_t o = (oh * p.ow + ow) * B;
      float left[B];  // 1 until the maximum's position is found
      for (int j = 0; j < B; ++j) left[j] = 1.0f;
      for (int64_t ih = h0; ih < h1; ++ih) {
        for (int64_t iw = w0; iw < w1; ++iw) {
          const int64_t at = (ih * p.w + iw) * B;
#pragma omp simd
          for (int j = 0; j < B; ++j) {
            const float hit = left[j] * static_cast<float>(x[at + j] == y[o + j]);
            dx[at + j] += hit * dy[o + j];
            left[j] -= hit;
          }
        }
      }
    }
  }
}

template <int B>
void Forward(void **params, const Pool &p) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[2]);
  const int64_t in_plane = p.h * p.w * B, out_plane = p.oh * p.ow * B;
  KernelParallelFor(static_cast<int>(p.planes), [&](int plane, int) {
    ForwardPlane<B>(x + plane * in_plane, y + plane * out_plane, p);
  });
}

template <int B>
void Backward(void **params, const Pool &p) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *y = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[4]);
  const int64_t in_plane = p.h * p.w * B, out_plane = p.oh * p.ow * B;
  KernelParallelFor(static_cast<int>(p.planes), [&](int plane, int) {
    BackwardPlane<B>(dy + plane * out_plane, x + plane * in_plane, y + plane * out_plane,
                     dx + plane * in_plane, p);
  });
}

// Runs fn(std::integral_constant<int, B>) for the settings' block B; 1 for an unknown one.
template <typename Fn>
int ForBlock(int block, Fn fn) {
  if (block == 16) {
    fn(std::integral_constant<int, 16>{});
  } else if (block == 8) {
    fn(std::integral_constant<int, 8>{});
  } else {
    return 1;
  }
  return 0;
}

}  // namespace

extern "C" {

// params: x, settings, y
int MaxPoolForward(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const Pool p = ReadPool(shapes[0], shapes[2], params[1]);
  return ForBlock(p.block, [&](auto block) { Forward<decltype(block)::value>(params, p); });
}

// params: dy, x, y, settings, dx
int MaxPoolBackward(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const Pool p = ReadPool(shapes[1], shapes[0], params[3]);
  return ForBlock(p.block, [&](auto block) { Backward<decltype(block)::value>(params, p); });
}

}  // extern "C"
