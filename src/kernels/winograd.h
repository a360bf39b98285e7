// Winograd F(4x4, 3x3) convolution over the blocked layout (see winograd.cc).
#pragma once
#include <cstdint>

constexpr int64_t kWinogradPositions = 36;  // transformed values per tile: a 6x6 input patch

// x (n, c, h, w) -> y (n, k, h, w), both blocked by `block` channels; 3x3 kernel, stride 1,
// padding 1. Tiles: tiles_h x tiles_w of 4x4 outputs per image.
struct WinogradShape {
  int64_t n, c, h, w, k;
  int block;
  int64_t tiles_h, tiles_w;
  int64_t tiles() const { return n * tiles_h * tiles_w; }
  // Floats of each of the two scratch buffers: V (tiles, 36, c) and M (tiles, 36, k); the
  // weight gradient's transformed dy has M's size.
  int64_t input_scratch() const { return kWinogradPositions * tiles() * c; }
  int64_t output_scratch() const { return kWinogradPositions * tiles() * k; }
  int64_t weights_size() const { return kWinogradPositions * c * k; }  // U (36, c, k)
};

WinogradShape MakeWinogradShape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int block);

// u (36, c, k) from MindSpore's weights w (k, c, 3, 3); `flipped`: from w (c, k, 3, 3) turned
// by 180 degrees instead, whose convolution of dy is the gradient of x (3x3, stride 1, padding 1).
void WinogradWeights(const WinogradShape &s, const float *w, float *u, bool flipped);

// The convolution is three steps: V = WinogradInput(x); M_i = V_i U_i for each of the 36
// positions i (a batched GEMM: (tiles x c) by (c x k), V_i and M_i rows 36 c and 36 k apart,
// the caller's); y = WinogradOutput(M).
// v (tiles, 36, c) from x.
void WinogradInput(const WinogradShape &s, const float *x, float *v);

// y = activation(A^T m A [+ bias] [+ residual]) from m (tiles, 36, k); bias (k) and residual
// (y's shape and layout) may be null; activation 0 none, 1 ReLU, 2 ReLU6.
void WinogradOutput(const WinogradShape &s, const float *m, const float *bias,
                    const float *residual, int activation, float *y);

// The weight gradient, by the same transforms read the other way round (F(3x3, 4x4)): each
// tile's share of dw is G^T [ (A dY A^T) . (B^T d B) ] G, where dY is the tile's 4x4 of dy and
// d the 6x6 patch of x that WinogradInput reads. Summed over tiles in the transformed domain,
// dW_i = V_i^T E_i (c x tiles by tiles x k: a batched GEMM, the caller's) for the 36 positions
// i, then dw = G^T dW G.
// e (tiles, 36, k) = A dY A^T from dy (n, k, h, w), blocked (zeros past its edges).
void WinogradOutputGradient(const WinogradShape &s, const float *dy, float *e);

// dw (k, c, 3, 3), MindSpore's weight layout, = G^T dW G from dw_hat (36, c, k).
void WinogradWeightGradient(const WinogradShape &s, const float *dw_hat, float *dw);
