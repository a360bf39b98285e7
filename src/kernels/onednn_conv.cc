// 2-D convolution for MindSpore's CPU backend through oneDNN with blocked layouts.
//
// MindSpore 2.10's own CPU convolution creates its oneDNN primitives with plain NCHW/OIHW
// layouts, which AVX-512 kernels refuse (a reference kernel runs instead, or im2col + GEMM
// under ONEDNN_MAX_CPU_ISA=AVX2). Here oneDNN chooses the layouts (format_tag::any), so it
// runs its direct/brgemm kernels; tensors are reordered from and to MindSpore's plain layouts
// around each call. MindSpore Custom AOT entry points: forward, and backward (data and
// weights, with bias, in one op); each with and without bias. Tensors in and out are float32; the arithmetic is float32, or
// with compute_bf16 bfloat16 multiplies with float32 accumulation (inputs are rounded to bf16
// as they are reordered; outputs and weight gradients stay float32): AMX on processors with it.
//
// Every entry point takes, after its tensors, an int32[17] "geometry" tensor:
//   stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, groups, has_bias,
//   compute_bf16, no_input_grad (backward gives dx = 0 without computing it: for a layer
//   whose input is the network's input image), src_block, dst_block (0: x / y, and their
//   gradients, are NCHW; 16 or 8: in oneDNN's blocked aBcd16b / aBcd8b layout, the one its
//   AVX-512 / AVX2 kernels use, which our BatchNorm and the next convolution read, so no
//   reorder is needed between layers),
//   activation (0 none, 1 ReLU, 2 ReLU6, fused into the forward: inference only),
//   constant_weights_id (0, or a layer id: its weights do not change, keep them reordered),
//   residual_sum (forward only: a residual input is added before the activation),
//   dst_nhwc (y and its gradient are (N, OH, OW, O), NHWC: for outputs that are flattened
//   location-major next, which then need no transpose),
//   winograd (the forward and both gradients by Winograd F(4x4, 3x3), winograd.cc, instead
//   of direct convolution: for 3x3, stride 1, padding 1, one group, float32, x and y blocked in
//   the same block; with a bias the weight gradient stays direct).
//
// The forward op has a second output the size of x (one element when x is blocked): x in the layout the convolution read it
// in, when that is not the plain one. The backward op gets it back from MindSpore (it is the
// forward's output, kept for the bprop) and computes the weight gradient from it when that
// layout is also the one backward-weights wants, instead of reordering x again.
// Weights are MindSpore's (O, I/groups, kh, kw). Primitives and their blocked buffers are
// cached per shape and geometry. Work runs on the kernels' thread pool (thread_pool.cc: the
// oneDNN library bundled with MindSpore uses the threadpool runtime, so it needs one to use
// more than one core).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_threadpool.hpp"
#include "threads.h"
#include "winograd.h"

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;


struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream = dnnl::threadpool_interop::make_stream(engine, &KernelThreadPool());
};

Runtime &Rt() {
  static Runtime runtime;
  return runtime;
}

// NCHW (block 0) or oneDNN's blocked layout of 16 or 8 channels.
tag LayoutTag(int64_t block) {
  return block == 16 ? tag::aBcd16b : block == 8 ? tag::aBcd8b : tag::nchw;
}

// The int32 geometry tensor, field by field in the order of the list at the top
// (src/model/onednn_conv.py's ConvGeometry names the same fields in the same order, and a test
// compares the two lists).
struct Geometry {
  int32_t stride_h, stride_w, pad_t, pad_l, pad_b, pad_r, groups, has_bias, bf16, no_input_grad,
      src_block, dst_block, activation, constant_weights_id, residual_sum, dst_nhwc, winograd;
  dt compute() const { return bf16 ? dt::bf16 : dt::f32; }
  // MindSpore's layout of x / y (and of their gradients): NCHW, or blocked.
  tag src_tag() const { return LayoutTag(src_block); }
  tag dst_tag() const { return dst_nhwc ? tag::acdb : LayoutTag(dst_block); }
};
static_assert(sizeof(Geometry) == 17 * sizeof(int32_t), "the tensor's values, nothing else");

Geometry ReadGeometry(const void *data) {
  Geometry g;
  std::memcpy(&g, data, sizeof g);
  if (g.groups < 1) g.groups = 1;
  return g;
}

struct Shapes {
  memory::dims src, wei, dst, bias, strides, dilates{0, 0}, pad_l, pad_r;
  tag wei_tag;
};

// x (N, C, H, W), w (O, C/g, kh, kw), y (N, O, OH, OW).
Shapes MakeShapes(const int64_t *x, const int64_t *w, const Geometry &g) {
  Shapes s;
  const int64_t oh = (x[2] + g.pad_t + g.pad_b - w[2]) / g.stride_h + 1;
  const int64_t ow = (x[3] + g.pad_l + g.pad_r - w[3]) / g.stride_w + 1;
  s.src = {x[0], x[1], x[2], x[3]};
  s.dst = {x[0], w[0], oh, ow};
  s.bias = {w[0]};
  s.strides = {g.stride_h, g.stride_w};
  s.pad_l = {g.pad_t, g.pad_l};
  s.pad_r = {g.pad_b, g.pad_r};
  if (g.groups > 1) {
    s.wei = {g.groups, w[0] / g.groups, w[1], w[2], w[3]};
    s.wei_tag = tag::goihw;
  } else {
    s.wei = {w[0], w[1], w[2], w[3]};
    s.wei_tag = tag::oihw;
  }
  return s;
}

std::string Key(const char *kind, const int64_t *x, const int64_t *w, const Geometry &g) {
  std::ostringstream key;
  key << kind;
  for (int i = 0; i < 4; ++i) key << ',' << x[i] << ',' << w[i];
  key << ',' << g.stride_h << ',' << g.stride_w << ',' << g.pad_t << ',' << g.pad_l << ','
      << g.pad_b << ',' << g.pad_r << ',' << g.groups << ',' << g.has_bias << ',' << g.bf16
      << ',' << g.src_block << ',' << g.dst_block << ',' << g.activation << ','
      << g.residual_sum << ',' << g.dst_nhwc << ',' << g.winograd;
  return key.str();
}

// A tensor in MindSpore's plain layout and the layout the primitive wants; reorders between
// them when they differ (the blocked buffer lives as long as the cache entry).
struct Port {
  memory::desc plain, chosen;
  memory blocked;
  bool reorder = false;
  dnnl::reorder to_chosen, to_plain;

  void Init(const memory::desc &plain_desc, const memory::desc &chosen_desc, bool input,
            bool output) {
    auto &engine = Rt().engine;
    plain = plain_desc;
    chosen = chosen_desc;
    reorder = plain != chosen;
    if (!reorder) return;
    blocked = memory(chosen, engine);
    memory plain_mem(plain, engine, DNNL_MEMORY_NONE);
    if (input) to_chosen = dnnl::reorder(plain_mem, blocked);
    if (output) to_plain = dnnl::reorder(blocked, plain_mem);
  }
  // The memory the primitive reads or writes for user data at `ptr`.
  memory Bind(void *ptr, bool input) {
    memory user(plain, Rt().engine, ptr);
    if (!reorder) return user;
    if (input) to_chosen.execute(Rt().stream, user, blocked);
    return blocked;
  }
  void Finish(void *ptr) {
    if (!reorder) return;
    memory user(plain, Rt().engine, ptr);
    to_plain.execute(Rt().stream, blocked, user);
  }
};

struct Forward {
  dnnl::convolution_forward conv;
  Port src, wei, dst;
  memory::desc bias;
  bool src_to_output = false;  // x is reordered into the second output (see the top)
};
struct BackwardData {
  dnnl::convolution_backward_data conv;
  Port diff_dst, wei, diff_src;
};
struct BackwardWeights {
  dnnl::convolution_backward_weights conv;
  Port src, diff_dst, diff_wei;
  memory::desc diff_bias;
};

std::mutex cache_mutex;
std::map<std::string, std::shared_ptr<void>> cache;

memory::desc Any(const memory::dims &dims, dt type) { return memory::desc(dims, type, tag::any); }

// src and weights in `compute`, dst in `dst_type`, bias float32; `sum` adds what dst holds,
// then activation (1 ReLU, 2 ReLU6) applies, both as oneDNN post-ops (inference networks only:
// there is no backward for them).
dnnl::convolution_forward::primitive_desc ForwardDesc(const Shapes &s, bool bias, dt compute,
                                                      dt dst_type, int64_t activation = 0,
                                                      bool sum = false) {
  dnnl::primitive_attr attr;
  dnnl::post_ops post;
  if (sum) post.append_sum(1.0f);
  if (activation) {
    if (activation == 2) {
      post.append_eltwise(dnnl::algorithm::eltwise_clip, 0.0f, 6.0f);
    } else {
      post.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    }
  }
  if (sum || activation) attr.set_post_ops(post);
  if (bias) {
    return dnnl::convolution_forward::primitive_desc(
        Rt().engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
        Any(s.src, compute), Any(s.wei, compute), memory::desc(s.bias, dt::f32, tag::x),
        Any(s.dst, dst_type), s.strides, s.dilates, s.pad_l, s.pad_r, attr);
  }
  return dnnl::convolution_forward::primitive_desc(
      Rt().engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Any(s.src, compute), Any(s.wei, compute), Any(s.dst, dst_type), s.strides, s.dilates,
      s.pad_l, s.pad_r, attr);
}

// Weights of a layer that promised they do not change (constant_weights_id: one id per layer
// of an inference network), kept in the primitive's layout: reordered again only when the
// layer's weight buffer or the wanted layout changes.
struct ConstantWeights {
  const void *source = nullptr;
  memory::desc desc;
  memory blocked;
};
std::mutex constant_mutex;
std::map<int64_t, ConstantWeights> constant_weights;

memory ReorderedOnce(int64_t id, Port &port, void *weights) {
  if (!port.reorder) return port.Bind(weights, true);
  std::lock_guard<std::mutex> lock(constant_mutex);
  ConstantWeights &entry = constant_weights[id];
  if (entry.source != weights || entry.desc != port.chosen) {
    entry.blocked = memory(port.chosen, Rt().engine);
    memory user(port.plain, Rt().engine, weights);
    port.to_chosen.execute(Rt().stream, user, entry.blocked);
    Rt().stream.wait();
    entry.source = weights;
    entry.desc = port.chosen;
  }
  return entry.blocked;
}

template <typename T>
T *Cached(const std::string &key, const std::function<T *()> &make) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = cache.find(key);
  if (found != cache.end()) return static_cast<T *>(found->second.get());
  T *entry = make();
  cache[key] = std::shared_ptr<void>(entry, [](void *p) { delete static_cast<T *>(p); });
  return entry;
}

template <typename T>
T *Find(const std::string &key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = cache.find(key);
  return found == cache.end() ? nullptr : static_cast<T *>(found->second.get());
}

memory::desc Plain(const memory::dims &dims, tag t) { return memory::desc(dims, dt::f32, t); }

int Fail(const char *what, const dnnl::error &error) {
  std::fprintf(stderr, "onednn_conv %s: %s (status %d)\n", what, error.what(),
               static_cast<int>(error.status));
  return 1;
}

// One Winograd shape (a forward, or an input gradient): its batched GEMM (36 x (tiles x C) by
// (C x K), V and M tile-major as winograd.cc writes them) and scratch buffers. The weights'
// transform U is kept per layer when they are constant, else recomputed each call into
// `weights`.
struct WinogradEntry {
  WinogradShape shape;
  dnnl::matmul gemm;
  memory::desc v_desc, u_desc, m_desc;
  std::vector<float> v, m, weights;
};

struct ConstantWinogradWeights {
  const void *source = nullptr;
  std::vector<float> u;
};
std::mutex winograd_weights_mutex;
std::map<int64_t, ConstantWinogradWeights> winograd_weights;

// out = activation(conv(in) [+ bias] [+ residual]) by Winograd for `shape`; `flipped`: the
// weights turned (the input gradient from dy, see WinogradWeights). The weights' transform is
// kept per layer for constant weights (constant_id), else recomputed into the entry's buffer.
void RunWinograd(const std::string &key, const WinogradShape &shape, const float *weights,
                 bool flipped, int64_t constant_id, const float *in, const float *bias,
                 const float *residual, int activation, float *out) {
  WinogradEntry *e = Cached<WinogradEntry>(key, [&] {
    auto *entry = new WinogradEntry();
    entry->shape = shape;
    const WinogradShape &s = entry->shape;
    const int64_t tiles = s.tiles();
    const int64_t p = kWinogradPositions;
    entry->v_desc = memory::desc({p, tiles, s.c}, dt::f32, {s.c, p * s.c, 1});
    entry->u_desc = memory::desc({p, s.c, s.k}, dt::f32, tag::abc);
    entry->m_desc = memory::desc({p, tiles, s.k}, dt::f32, {s.k, p * s.k, 1});
    entry->gemm = dnnl::matmul(
        dnnl::matmul::primitive_desc(Rt().engine, entry->v_desc, entry->u_desc, entry->m_desc));
    entry->v.resize(s.input_scratch());
    entry->m.resize(s.output_scratch());
    return entry;
  });
  const WinogradShape &s = e->shape;
  const float *u;
  if (constant_id) {
    std::lock_guard<std::mutex> lock(winograd_weights_mutex);
    ConstantWinogradWeights &kept = winograd_weights[constant_id];
    if (kept.source != weights || static_cast<int64_t>(kept.u.size()) != s.weights_size()) {
      kept.u.resize(s.weights_size());
      WinogradWeights(s, weights, kept.u.data(), flipped);
      kept.source = weights;
    }
    u = kept.u.data();
  } else {
    e->weights.resize(s.weights_size());
    WinogradWeights(s, weights, e->weights.data(), flipped);
    u = e->weights.data();
  }
  WinogradInput(s, in, e->v.data());
  e->gemm.execute(Rt().stream,
                  {{DNNL_ARG_SRC, memory(e->v_desc, Rt().engine, e->v.data())},
                   {DNNL_ARG_WEIGHTS, memory(e->u_desc, Rt().engine, const_cast<float *>(u))},
                   {DNNL_ARG_DST, memory(e->m_desc, Rt().engine, e->m.data())}});
  Rt().stream.wait();
  WinogradOutput(s, e->m.data(), bias, residual, activation, out);
}

// The forward by Winograd; params as ConvForward's.
void WinogradForwardConv(int nparam, void **params, int64_t **shapes, const Geometry &g) {
  const int64_t *x = shapes[0], *w = shapes[1];
  const auto f = [](void *p) { return static_cast<const float *>(p); };
  RunWinograd(Key("winograd", x, w, g),
              MakeWinogradShape(x[0], x[1], x[2], x[3], w[0], static_cast<int>(g.src_block)),
              f(params[1]), false, g.constant_weights_id, f(params[0]),
              g.has_bias ? f(params[2]) : nullptr,
              g.residual_sum ? f(params[g.has_bias ? 3 : 2]) : nullptr,
              static_cast<int>(g.activation), static_cast<float *>(params[nparam - 2]));
}

// dx = conv(dy, w turned) by Winograd: x's shape, w (O, C, 3, 3), dy blocked as x is.
void WinogradInputGradient(const int64_t *x, const int64_t *w, const Geometry &g,
                           const void *dy, const void *weights, void *dx) {
  RunWinograd(Key("winograd_dx", x, w, g),
              MakeWinogradShape(x[0], w[0], x[2], x[3], x[1], static_cast<int>(g.src_block)),
              static_cast<const float *>(weights), true, 0, static_cast<const float *>(dy),
              nullptr, nullptr, 0, static_cast<float *>(dx));
}

// The weight gradient's batched GEMM for one shape: dW_i = V_i^T E_i (36 x (c x tiles) by
// (tiles x k)), V_i read transposed from the tile-major V, and its scratch buffers.
struct WinogradWeightGradientEntry {
  WinogradShape shape;
  dnnl::matmul gemm;
  memory::desc v_desc, e_desc, dw_desc;
  std::vector<float> v, e, dw_hat;
};

// dw (O, C, 3, 3) of conv(x, w) from x and dy by Winograd: x (N, C, H, W) and dy blocked.
void WinogradWeightGradientConv(const int64_t *x, const int64_t *w, const Geometry &g,
                             const void *x_data, const void *dy, void *dw) {
  WinogradWeightGradientEntry *e = Cached<WinogradWeightGradientEntry>(Key("winograd_dw", x, w, g), [&] {
    auto *entry = new WinogradWeightGradientEntry();
    entry->shape = MakeWinogradShape(x[0], x[1], x[2], x[3], w[0],
                                     static_cast<int>(g.src_block));
    const WinogradShape &s = entry->shape;
    const int64_t tiles = s.tiles();
    const int64_t p = kWinogradPositions;
    entry->v_desc = memory::desc({p, s.c, tiles}, dt::f32, {s.c, 1, p * s.c});
    entry->e_desc = memory::desc({p, tiles, s.k}, dt::f32, {s.k, p * s.k, 1});
    entry->dw_desc = memory::desc({p, s.c, s.k}, dt::f32, tag::abc);
    entry->gemm = dnnl::matmul(
        dnnl::matmul::primitive_desc(Rt().engine, entry->v_desc, entry->e_desc, entry->dw_desc));
    entry->v.resize(s.input_scratch());
    entry->e.resize(s.output_scratch());
    entry->dw_hat.resize(s.weights_size());
    return entry;
  });
  const WinogradShape &s = e->shape;
  WinogradInput(s, static_cast<const float *>(x_data), e->v.data());
  WinogradOutputGradient(s, static_cast<const float *>(dy), e->e.data());
  e->gemm.execute(Rt().stream, {{DNNL_ARG_SRC, memory(e->v_desc, Rt().engine, e->v.data())},
                                {DNNL_ARG_WEIGHTS, memory(e->e_desc, Rt().engine, e->e.data())},
                                {DNNL_ARG_DST, memory(e->dw_desc, Rt().engine, e->dw_hat.data())}});
  Rt().stream.wait();
  WinogradWeightGradient(s, e->dw_hat.data(), static_cast<float *>(dw));
}

// Whether the geometry asks for Winograd and it can run it (else: direct).
bool RunsWinograd(const int64_t *x, const int64_t *w, const Geometry &g) {
  return g.winograd && w[2] == 3 && w[3] == 3 && g.stride_h == 1 && g.stride_w == 1 &&
         g.pad_t == 1 && g.pad_l == 1 && g.pad_b == 1 && g.pad_r == 1 && g.groups == 1 &&
         !g.bf16 && !g.dst_nhwc && g.src_block && g.src_block == g.dst_block &&
         x[1] % g.src_block == 0 && w[0] % g.dst_block == 0;
}

}  // namespace

extern "C" {

// params: x, w, [bias,] [residual (with residual_sum: y = act(conv + residual)),] geometry, y,
// x_blocked
int ConvForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                void *stream, void *extra) {
  try {
    const Geometry g = ReadGeometry(params[nparam - 3]);
    const bool has_bias = g.has_bias;
    const int64_t *x = shapes[0], *w = shapes[1];
    if (RunsWinograd(x, w, g)) {
      WinogradForwardConv(nparam, params, shapes, g);
      return 0;
    }
    Forward *f = Cached<Forward>(Key("fwd", x, w, g), [&] {
      Shapes s = MakeShapes(x, w, g);
      auto pd = ForwardDesc(s, has_bias, g.compute(), dt::f32, g.activation, g.residual_sum);
      auto *e = new Forward();
      e->conv = dnnl::convolution_forward(pd);
      e->src.Init(Plain(s.src, g.src_tag()), pd.src_desc(), true, false);
      e->wei.Init(Plain(s.wei, s.wei_tag), pd.weights_desc(), true, false);
      e->dst.Init(Plain(s.dst, g.dst_tag()), pd.dst_desc(), g.residual_sum, true);
      e->bias = Plain(s.bias, tag::x);
      e->src_to_output = !g.src_block && e->src.reorder &&
                         e->src.chosen.get_size() <= e->src.plain.get_size();
      return e;
    });
    void *y = params[nparam - 2];
    memory src;
    if (f->src_to_output) {
      src = memory(f->src.chosen, Rt().engine, params[nparam - 1]);
      memory user(f->src.plain, Rt().engine, params[0]);
      f->src.to_chosen.execute(Rt().stream, user, src);
    } else {
      src = f->src.Bind(params[0], true);
    }
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_WEIGHTS,
                                             g.constant_weights_id
                                                 ? ReorderedOnce(g.constant_weights_id, f->wei,
                                                                 params[1])
                                                 : f->wei.Bind(params[1], true)},
                                            {DNNL_ARG_DST, f->dst.Bind(y, false)}};
    if (has_bias) args[DNNL_ARG_BIAS] = memory(f->bias, Rt().engine, params[2]);
    if (g.residual_sum) {  // the sum post-op adds what the destination holds: the residual
      void *residual = params[has_bias ? 3 : 2];
      if (f->dst.reorder) {
        f->dst.Bind(residual, true);
      } else {
        std::memcpy(y, residual, f->dst.plain.get_size());
      }
    }
    f->conv.execute(Rt().stream, args);
    f->dst.Finish(y);
    Rt().stream.wait();
  } catch (const dnnl::error &error) {
    return Fail("forward", error);
  }
  return 0;
}

BackwardData *MakeBackwardData(const Shapes &s, const Geometry &g) {
  const dt c = g.compute();
  auto hint = ForwardDesc(s, false, c, c);
  auto pd = dnnl::convolution_backward_data::primitive_desc(
      Rt().engine, dnnl::algorithm::convolution_direct, Any(s.src, dt::f32), Any(s.wei, c),
      Any(s.dst, c), s.strides, s.dilates, s.pad_l, s.pad_r, hint);
  auto *e = new BackwardData();
  e->conv = dnnl::convolution_backward_data(pd);
  e->diff_dst.Init(Plain(s.dst, g.dst_tag()), pd.diff_dst_desc(), true, false);
  e->wei.Init(Plain(s.wei, s.wei_tag), pd.weights_desc(), true, false);
  e->diff_src.Init(Plain(s.src, g.src_tag()), pd.diff_src_desc(), false, true);
  return e;
}

BackwardWeights *MakeBackwardWeights(const Shapes &s, const Geometry &g) {
  const dt c = g.compute();
  auto hint = ForwardDesc(s, g.has_bias, c, c);
  auto pd = g.has_bias
                ? dnnl::convolution_backward_weights::primitive_desc(
                      Rt().engine, dnnl::algorithm::convolution_direct, Any(s.src, c),
                      Any(s.wei, dt::f32), Plain(s.bias, tag::x), Any(s.dst, c), s.strides,
                      s.dilates, s.pad_l, s.pad_r, hint)
                : dnnl::convolution_backward_weights::primitive_desc(
                      Rt().engine, dnnl::algorithm::convolution_direct, Any(s.src, c),
                      Any(s.wei, dt::f32), Any(s.dst, c), s.strides, s.dilates, s.pad_l,
                      s.pad_r, hint);
  auto *e = new BackwardWeights();
  e->conv = dnnl::convolution_backward_weights(pd);
  e->src.Init(Plain(s.src, g.src_tag()), pd.src_desc(), true, false);
  e->diff_dst.Init(Plain(s.dst, g.dst_tag()), pd.diff_dst_desc(), true, false);
  e->diff_wei.Init(Plain(s.wei, s.wei_tag), pd.diff_weights_desc(), false, true);
  e->diff_bias = Plain(s.bias, tag::x);
  return e;
}

// Both backward convolutions in one op, so that dy is reordered once when they want the same
// layout (they usually do).
struct Backward {
  std::unique_ptr<BackwardData> data;
  std::unique_ptr<BackwardWeights> weights;
  bool share_diff_dst = false;
  bool src_from_forward = false;  // x_blocked holds x as backward-weights wants it
};

// params: dy, x, x_blocked (the forward's second output), w, geometry, dx, dw [, db]
int ConvBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                 void *stream, void *extra) {
  try {
    const Geometry g = ReadGeometry(params[4]);
    const bool has_bias = g.has_bias;
    const int64_t *x = shapes[1], *w = shapes[3];
    const Forward *f = Find<Forward>(Key("fwd", x, w, g));  // ran before, for this x
    Backward *b = Cached<Backward>(Key("bwd", x, w, g), [&] {
      Shapes s = MakeShapes(x, w, g);
      auto *e = new Backward();
      e->data.reset(MakeBackwardData(s, g));
      e->weights.reset(MakeBackwardWeights(s, g));
      e->share_diff_dst = e->data->diff_dst.chosen == e->weights->diff_dst.chosen;
      e->src_from_forward = f && f->src_to_output && f->src.chosen == e->weights->src.chosen;
      return e;
    });
    void *dx = params[5], *dw = params[6];
    BackwardData &d = *b->data;
    BackwardWeights &k = *b->weights;
    const bool winograd = RunsWinograd(x, w, g), winograd_dw = winograd && !has_bias;
    memory dy;
    if (!winograd_dw) dy = k.diff_dst.Bind(params[0], true);
    if (g.no_input_grad) {
      std::memset(dx, 0, d.diff_src.plain.get_size());
    } else if (winograd) {
      WinogradInputGradient(x, w, g, params[0], params[3], dx);
    } else {
      d.conv.execute(Rt().stream, {{DNNL_ARG_DIFF_DST, b->share_diff_dst
                                                           ? dy
                                                           : d.diff_dst.Bind(params[0], true)},
                                   {DNNL_ARG_WEIGHTS, d.wei.Bind(params[3], true)},
                                   {DNNL_ARG_DIFF_SRC, d.diff_src.Bind(dx, false)}});
      d.diff_src.Finish(dx);
    }
    if (winograd_dw) {
      WinogradWeightGradientConv(x, w, g, params[1], params[0], dw);
      return 0;
    }
    memory src = b->src_from_forward ? memory(k.src.chosen, Rt().engine, params[2])
                                     : k.src.Bind(params[1], true);
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_DIFF_DST, dy},
                                            {DNNL_ARG_DIFF_WEIGHTS, k.diff_wei.Bind(dw, false)}};
    if (has_bias) args[DNNL_ARG_DIFF_BIAS] = memory(k.diff_bias, Rt().engine, params[7]);
    k.conv.execute(Rt().stream, args);
    k.diff_wei.Finish(dw);
    Rt().stream.wait();
  } catch (const dnnl::error &error) {
    return Fail("backward", error);
  }
  return 0;
}

// Layout changes between MindSpore's NCHW and the blocked aBcd16b / aBcd8b (channels a multiple
// of the block) that our layers keep activations in (see src/model/layout.py); each is the
// other's gradient.
int Reorder(void **params, int64_t **shapes, tag from, tag to) {
  try {
    const int64_t *x = shapes[0];
    const memory::dims dims = {x[0], x[1], x[2], x[3]};
    std::ostringstream key;
    key << "reorder," << static_cast<int>(from) << ',' << static_cast<int>(to) << ','
        << dims[0] << ',' << dims[1] << ',' << dims[2] << ',' << dims[3];
    auto *r = Cached<dnnl::reorder>(key.str(), [&] {
      return new dnnl::reorder(memory(Plain(dims, from), Rt().engine, DNNL_MEMORY_NONE),
                               memory(Plain(dims, to), Rt().engine, DNNL_MEMORY_NONE));
    });
    memory src(Plain(dims, from), Rt().engine, params[0]);
    memory dst(Plain(dims, to), Rt().engine, params[1]);
    r->execute(Rt().stream, src, dst);
    Rt().stream.wait();
  } catch (const dnnl::error &error) {
    return Fail("reorder", error);
  }
  return 0;
}

// params: x (N, C, H, W), y
int ToBlocked(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Reorder(params, shapes, tag::nchw, tag::aBcd16b);
}
int ToPlain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Reorder(params, shapes, tag::aBcd16b, tag::nchw);
}
int ToBlocked8(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Reorder(params, shapes, tag::nchw, tag::aBcd8b);
}
int ToPlain8(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return Reorder(params, shapes, tag::aBcd8b, tag::nchw);
}

// The same with a bias (separate names: MindSpore keys some Custom op information by function).
int ConvForwardBias(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                    void *stream, void *extra) {
  return ConvForward(nparam, params, ndims, shapes, dtypes, stream, extra);
}
int ConvForwardBiasSum(int nparam, void **params, int *ndims, int64_t **shapes,
                       const char **dtypes, void *stream, void *extra) {
  return ConvForward(nparam, params, ndims, shapes, dtypes, stream, extra);
}

int ConvBackwardBias(int nparam, void **params, int *ndims, int64_t **shapes,
                     const char **dtypes, void *stream, void *extra) {
  return ConvBackward(nparam, params, ndims, shapes, dtypes, stream, extra);
}

}  // extern "C"
