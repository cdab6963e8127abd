// Convolution kernels for XLA:CPU, as XLA FFI handlers (AVX-512, or AVX2 with FMA):
// lib/cpu/conv_kernel.py builds this file and lib/cpu/conv.py calls it. Three families:
//
// 1. The weight gradient of a 2-D convolution (NHWC input, HWIO kernel, no dilation, one group):
//
//      dw[i, j, c, k] = sum over n, oh, ow of x[n, oh*sh + i - pt, ow*sw + j - pl, c] * dy[n, oh, ow, k]
//
//    XLA:CPU computes it as a convolution whose window is the whole output (Eigen, about 115
//    GFLOP/s on the MNIST CNN's second layer on an AVX-512 CPU); here each (tap, channels,
//    out-channels) tile of dw is summed in registers straight from x and dy, with no patches in
//    memory (about 190 GFLOP/s there, the machine's matmul speed, on 2 cores).
// 2. A network's first block, conv + bias -> ReLU -> 2x2 pool, forward and backward (below).
// 3. 1-D convolutions of a population's members at once (Conv1d below): forward, input gradient
//    and weight gradient, each member's patches read in place and padded there, optionally with
//    a fused bias + ReLU (forward) and ReLU mask + bias gradient (backward), or two such layers as
//    one block whose first output stays in cache (Conv1dPair below). Vmapped, XLA:CPU computes the
//    members' convolutions as one grouped convolution, or (as im2col) batched matrix products
//    of 25 columns for MNIST-1D's CNN, at a fifth of the matmul speed; here each member's rows
//    are tiled in registers, at about twice the speed of those products.
//
// The kernels themselves are in conv_kernel_simd.h, written once over a vector type; this file
// instantiates them for AVX-512 and for AVX2 + FMA, and each call runs the widest set this CPU
// has. Both cut the batch into a fixed number of chunks whatever the thread count; each chunk
// sums into its own buffer and the buffers are added in order, so the result does not depend on
// how XLA's threads pick up the chunks.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <immintrin.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c;  // input
  int64_t oh, ow, k;   // output gradient
  int64_t kh, kw, sh, sw, pt, pl;
};

// First output index o with o * stride + offset >= 0, and one past the last with it < size.
int64_t Begin(int64_t offset, int64_t stride) {
  return offset >= 0 ? 0 : (-offset + stride - 1) / stride;
}
int64_t End(int64_t offset, int64_t stride, int64_t size, int64_t out) {
  int64_t last = size - 1 - offset;
  return last < 0 ? 0 : std::min(out, last / stride + 1);
}

// The first block of an image CNN, conv (few input channels) + bias -> ReLU -> 2x2 pool (average
// or max, stride 2), as one pass: XLA writes the conv's output, the ReLU's and their gradients
// (12.8 MB each for the MNIST CNN) to memory; here they live in registers, and the backward pass
// recomputes the conv (9 multiply-adds per value) instead of reading it back. T = kh*kw*C taps,
// one vector of output channels per pass; xp is the input padded for the conv ('SAME'),
// (N, H+kh-1, W+kw-1, C).
struct Block {
  int64_t n, hp, wp, c, kh, kw, k, ph, pw;  // ph, pw: pooled output size.
  int64_t Offset(int64_t t) const { return ((t / c / kw) * wp + (t / c) % kw) * c + t % c; }
  const float* At(const float* xp, int64_t n_, int64_t h, int64_t w) const {
    return xp + ((n_ * hp + h) * wp + w) * c;
  }
};

// A 1-D convolution of M members at once (a population's, or M = 1): x (M, N, L, C), w (M, T, C,
// K), y (M, N, OL, K). Output row r = (n, o) reads T*C floats of sequence n from position
// o*S - PL on (its patch, contiguous in NWC); positions outside [0, L) are the padding's zeros.
struct Conv1d {
  int64_t m, n, l, c, ol, k, t, s, pl;
  int64_t P() const { return t * c; }
  int64_t Rows() const { return n * ol; }
  // Where the patch of output position o starts, and whether it lies inside the sequence.
  int64_t Start(int64_t o) const { return o * s - pl; }
  bool Inside(int64_t o) const { return Start(o) >= 0 && Start(o) + t <= l; }
};

// Rows r0, r0 + 1, ... as (sequence n, position o): one division per walk, not one per row
// (a 64-bit division costs more than a row of MNIST-1D's first layer).
struct Conv1dRowWalk {
  int64_t n, o, ol;
  Conv1dRowWalk(const Conv1d& g, int64_t r0) : n(r0 / g.ol), o(r0 % g.ol), ol(g.ol) {}
  void Next() {
    if (++o == ol) o = 0, ++n;
  }
};

// A call's arrays. Forward: x, w, and with a fused bias + ReLU, b (M, K); out is y. Input
// gradient: dy, w, and with a fused ReLU, its output a (masks dy); out is dx. Weight gradient:
// x, dy, and a as before.
struct Conv1dIo {
  const float *x, *w, *b, *dy, *a;
  float* out;
};

// Member m's rows [r0, r1) (forward) or sequences [r0, r1) (input gradient); the weight
// gradient's rows [r0, r1) into dw and, with a fused ReLU, the bias's gradient into db.
using Conv1dFn = void (*)(const Conv1dIo&, const Conv1d&, int64_t, int64_t, int64_t);
using Conv1dWgradFn = void (*)(const Conv1dIo&, const Conv1d&, int64_t, int64_t, int64_t, float*,
                               float*);
struct Conv1dFns {
  Conv1dFn forward, input_grad;
  Conv1dWgradFn weight_grad;
  bool transposed;  // weight_grad writes K x P, not P x K.
};

using ChunkFn = void (*)(const float*, const float*, float*, const Geometry&, int64_t, int64_t);
using ForwardFn = void (*)(const float*, const float*, const float*, float*, const Block&, int64_t,
                           int64_t);
using BackwardFn = void (*)(const float*, const float*, const float*, const float*, float*, float*,
                            const Block&, int64_t, int64_t);

// One instruction set's kernels: the weight gradient's chunk for (C, K), the block's for (taps,
// max pool).
struct Kernels {
  ChunkFn (*chunk)(int64_t c, int64_t k);
  ForwardFn (*forward)(int64_t taps, bool max);
  BackwardFn (*backward)(int64_t taps, bool max);
  Conv1dFns (*conv1d)(int64_t k, int64_t p);
};

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {

struct Simd {
  using V = __m512;
  using M = __mmask16;
  static constexpr int kLanes = 16;
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Set1(float a) { return _mm512_set1_ps(a); }
  static V Zero() { return _mm512_setzero_ps(); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Max(V a, V b) { return _mm512_max_ps(a, b); }
  static M None() { return 0; }
  static M Unordered(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static M Greater(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M Equal(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M And(M a, M b) { return a & b; }
  static M AndNot(M a, M b) { return static_cast<M>(~a & b); }  // b and not a.
  static M Or(M a, M b) { return a | b; }
  static V Keep(M m, V a) { return _mm512_maskz_mov_ps(m, a); }  // a where m, else 0.
  static V Select(M m, V a, V b) { return _mm512_mask_mov_ps(b, m, a); }  // a where m, else b.
  // The first n lanes (0 <= n <= 16); the others read as 0 and are not written.
  static M First(int64_t n) { return static_cast<M>((1u << n) - 1); }
  static V LoadN(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(First(n), p); }
  static void StoreN(float* p, V v, int64_t n) { _mm512_mask_storeu_ps(p, First(n), v); }
  static constexpr int kAccumulators = 24;  // Of the 32 registers; the rest for loads.
  static constexpr int kRegisters = 32;
};

#include "conv_kernel_simd.h"

// CT*KV accumulators (16 at most) plus KV loads stay in the 32 vector registers; tiles are as
// wide in out-channels as K allows.
ChunkFn PickChunk(int64_t c, int64_t k) {
  if (k % 64 == 0) return &Chunk<4, 4>;
  if (k % 32 == 0) return c % 8 == 0 ? &Chunk<8, 2> : &Chunk<4, 2>;
  return c % 16 == 0 ? &Chunk<16, 1> : c % 8 == 0 ? &Chunk<8, 1> : &Chunk<4, 1>;
}

constexpr Kernels kKernels{&PickChunk, &Pick<Forward>, &Pick<Backward>, &PickConv1d};

}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

struct Simd {
  using V = __m256;
  using M = __m256;  // All ones in the lanes that hold.
  static constexpr int kLanes = 8;
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Set1(float a) { return _mm256_set1_ps(a); }
  static V Zero() { return _mm256_setzero_ps(); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Max(V a, V b) { return _mm256_max_ps(a, b); }
  static M None() { return _mm256_setzero_ps(); }
  static M Unordered(V a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static M Greater(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M Equal(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M And(M a, M b) { return _mm256_and_ps(a, b); }
  static M AndNot(M a, M b) { return _mm256_andnot_ps(a, b); }  // b and not a.
  static M Or(M a, M b) { return _mm256_or_ps(a, b); }
  static V Keep(M m, V a) { return _mm256_and_ps(m, a); }
  static V Select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
  // The first n lanes (0 <= n <= 8); the others read as 0 and are not written.
  static __m256i First(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V LoadN(const float* p, int64_t n) { return _mm256_maskload_ps(p, First(n)); }
  static void StoreN(float* p, V v, int64_t n) { _mm256_maskstore_ps(p, First(n), v); }
  static constexpr int kAccumulators = 12;  // Of the 16 registers; the rest for loads.
  static constexpr int kRegisters = 16;
};

#include "conv_kernel_simd.h"

// 16 vector registers: CT*KV accumulators, KV loads and a broadcast.
ChunkFn PickChunk(int64_t, int64_t) { return &Chunk<4, 2>; }

constexpr Kernels kKernels{&PickChunk, &Pick<Forward>, &Pick<Backward>, &PickConv1d};

}  // namespace avx2
#pragma GCC pop_options

// Floats per vector of the widest instruction set this CPU runs: 16 (AVX-512), 8 (AVX2 + FMA) or
// 0 (neither; lib/cpu/conv_kernel.py then never registers the handlers).
int Lanes() {
  static const int lanes = __builtin_cpu_supports("avx512f")                               ? 16
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 8
                                                                                             : 0;
  return lanes;
}

const Kernels& Best() { return Lanes() == 16 ? avx512::kKernels : avx2::kKernels; }

// Runs fn(c, n0, n1) for `chunks` fixed slices [n0, n1) of [0, n), on this thread and XLA's pool.
// Tasks that start after every chunk is taken return at once, so this never waits for a task
// the pool has not started: the calling thread takes chunks itself until none is left.
template <typename Fn>
void ForChunks(ffi::ThreadPool& pool, int64_t n, int64_t chunks, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto run = [state, n, chunks, fn] {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      fn(c, n * c / chunks, n * (c + 1) / chunks);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([run] { run(); });
  run();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Each chunk sums into its own slice of `partial` and the slices are added in order: the result
// does not depend on which thread took which chunk.
void SumChunks(const std::vector<float>& partial, int64_t chunks, float* out) {
  const int64_t size = partial.size() / chunks;
  std::copy_n(partial.data(), size, out);
  for (int64_t c = 1; c < chunks; ++c)
    for (int64_t e = 0; e < size; ++e) out[e] += partial[c * size + e];
}

int64_t Chunks(int64_t n) { return std::clamp<int64_t>(n, 1, 16); }  // One, empty, for n = 0.

ffi::Error WgradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                     ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pl) {
  const auto xd = x.dimensions(), dyd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || wd.size() != 4 || dyd[0] != xd[0] ||
      wd[2] != xd[3] || wd[3] != dyd[3] || xd[3] % 4 != 0 || dyd[3] % 16 != 0) {
    return ffi::Error::InvalidArgument(
        "conv weight gradient: needs x (N,H,W,C), dy (N,OH,OW,K), dw (KH,KW,C,K), C % 4 == 0, "
        "K % 16 == 0");
  }
  const Geometry g{xd[0], xd[1], xd[2], xd[3], dyd[1], dyd[2], dyd[3], wd[0], wd[1], sh, sw, pt, pl};
  const ChunkFn chunk = Best().chunk(g.c, g.k);
  const int64_t chunks = Chunks(g.n), size = g.kh * g.kw * g.c * g.k;
  std::vector<float> partial(chunks * size);
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  float* pp = partial.data();
  ForChunks(pool, g.n, chunks, [=](int64_t c, int64_t n0, int64_t n1) {
    chunk(xp, dyp, pp + c * size, g, n0, n1);
  });
  SumChunks(partial, chunks, dw->typed_data());
  return ffi::Error::Success();
}

// The block's geometry, or an error unless x is (N, H+kh-1, W+kw-1, C) with H, W even,
// w (kh, kw, C, K), kh*kw*C one of 9, 18, 27 and K % 16 == 0.
std::optional<Block> BlockGeometry(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd) {
  if (xd.size() != 4 || wd.size() != 4 || wd[2] != xd[3] || wd[3] % 16 != 0) return std::nullopt;
  const int64_t taps = wd[0] * wd[1] * wd[2], h = xd[1] - wd[0] + 1, w = xd[2] - wd[1] + 1;
  if ((taps != 9 && taps != 18 && taps != 27) || h <= 0 || w <= 0 || h % 2 || w % 2)
    return std::nullopt;
  return Block{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], h / 2, w / 2};
}

constexpr char kBlockShapes[] =
    "conv block: needs padded x (N,H+KH-1,W+KW-1,C), w (KH,KW,C,K), b (K) with H, W even, "
    "KH*KW*C in {9, 18, 27}, K % 16 == 0";

ffi::Error BlockForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                            ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                            ffi::ResultBuffer<ffi::F32> out, bool max) {
  const auto g = BlockGeometry(xp.dimensions(), w.dimensions());
  if (!g) return ffi::Error::InvalidArgument(kBlockShapes);
  const ForwardFn fn = Best().forward(g->kh * g->kw * g->c, max);
  const float *x = xp.typed_data(), *wp = w.typed_data(), *bp = b.typed_data();
  float* o = out->typed_data();
  const Block geometry = *g;
  ForChunks(pool, geometry.n, Chunks(geometry.n), [=](int64_t, int64_t n0, int64_t n1) {
    fn(x, wp, bp, o, geometry, n0, n1);
  });
  return ffi::Error::Success();
}

ffi::Error BlockBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                             ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                             ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dw,
                             ffi::ResultBuffer<ffi::F32> db, bool max) {
  const auto g = BlockGeometry(xp.dimensions(), w.dimensions());
  if (!g) return ffi::Error::InvalidArgument(kBlockShapes);
  const int64_t taps = g->kh * g->kw * g->c;
  const BackwardFn fn = Best().backward(taps, max);
  const Block geometry = *g;
  const int64_t chunks = Chunks(geometry.n), size = (taps + 1) * geometry.k;
  std::vector<float> partial(chunks * size);  // Per chunk: dw (taps x K), then db (K).
  const float *x = xp.typed_data(), *wp = w.typed_data(), *bp = b.typed_data(),
              *dp = dout.typed_data();
  float* pp = partial.data();
  ForChunks(pool, geometry.n, chunks, [=](int64_t c, int64_t n0, int64_t n1) {
    float* slice = pp + c * size;
    fn(x, wp, bp, dp, slice, slice + taps * geometry.k, geometry, n0, n1);
  });
  std::vector<float> total(size);
  SumChunks(partial, chunks, total.data());
  std::copy_n(total.data(), taps * geometry.k, dw->typed_data());
  std::copy_n(total.data() + taps * geometry.k, geometry.k, db->typed_data());
  return ffi::Error::Success();
}

// The members of a 1-D convolution's arrays: the product of the dimensions before the last
// three (`tail`), or -1 unless the array has that many.
int64_t Members(ffi::Span<const int64_t> d, size_t tail = 3) {
  if (d.size() < tail) return -1;
  int64_t m = 1;
  for (size_t i = 0; i + tail < d.size(); ++i) m *= d[i];
  return m;
}

// The geometry from x (..., N, L, C), w (..., T, C, K), the output's length, stride and left
// padding, or nothing.
std::optional<Conv1d> Conv1dGeometry(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                                     int64_t ol, int64_t s, int64_t pl) {
  const int64_t m = Members(xd), r = xd.size(), q = wd.size();
  if (m < 0 || Members(wd) != m || wd[q - 2] != xd[r - 1] || s < 1 || pl < 0 || ol < 1)
    return std::nullopt;
  return Conv1d{m, xd[r - 3], xd[r - 2], xd[r - 1], ol, wd[q - 1], wd[q - 3], s, pl};
}

constexpr char kConv1dShapes[] =
    "conv1d: needs x (..., N, L, C), w (..., T, C, K), y or dy (..., N, OL, K), b (..., K) and "
    "the ReLU's output like y, with the same leading dimensions";

// Chunks per member: about 256 output rows each, at most one per sequence. Fixed by a member's
// shapes alone, so that a weight gradient's sums depend neither on the thread count nor on how
// many members share the call: a member computes the same bits alone and in a population.
int64_t Conv1dChunks(const Conv1d& g) {
  return std::clamp<int64_t>((g.Rows() + 255) / 256, 1, std::max<int64_t>(g.n, 1));
}

// Whether y or dy (..., N, OL, K), b and a fit the geometry.
bool Conv1dFits(const Conv1d& g, ffi::Span<const int64_t> yd, const ffi::Buffer<ffi::F32>* b,
                const ffi::Buffer<ffi::F32>* a) {
  const size_t r = yd.size();
  if (Members(yd) != g.m || yd[r - 3] != g.n || yd[r - 2] != g.ol || yd[r - 1] != g.k) return false;
  if (b && (Members(b->dimensions(), 1) != g.m || b->dimensions().back() != g.k)) return false;
  return !a || a->element_count() == static_cast<size_t>(g.m * g.Rows() * g.k);
}

ffi::Error Conv1dForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         const ffi::Buffer<ffi::F32>* b, ffi::ResultBuffer<ffi::F32> y, int64_t s,
                         int64_t pl) {
  const auto yd = y->dimensions();
  const auto g = Conv1dGeometry(x.dimensions(), w.dimensions(), yd[yd.size() - 2], s, pl);
  if (!g || !Conv1dFits(*g, yd, b, nullptr)) return ffi::Error::InvalidArgument(kConv1dShapes);
  const Conv1d geometry = *g;
  const Conv1dFn fn = Best().conv1d(geometry.k, geometry.P()).forward;
  const Conv1dIo io{x.typed_data(), w.typed_data(), b ? b->typed_data() : nullptr, nullptr,
                    nullptr, y->typed_data()};
  const int64_t per = Conv1dChunks(geometry), rows = geometry.Rows();
  ForChunks(pool, geometry.m * per, geometry.m * per, [=](int64_t c, int64_t, int64_t) {
    const int64_t j = c % per;
    fn(io, geometry, c / per, rows * j / per, rows * (j + 1) / per);
  });
  return ffi::Error::Success();
}

ffi::Error Conv1dInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                           ffi::Buffer<ffi::F32> w, const ffi::Buffer<ffi::F32>* a,
                           ffi::ResultBuffer<ffi::F32> dx, int64_t s, int64_t pl) {
  const auto dyd = dy.dimensions();
  const auto g = Conv1dGeometry(dx->dimensions(), w.dimensions(), dyd[dyd.size() - 2], s, pl);
  if (!g || !Conv1dFits(*g, dyd, nullptr, a)) return ffi::Error::InvalidArgument(kConv1dShapes);
  const Conv1d geometry = *g;
  const Conv1dFn fn = Best().conv1d(geometry.k, geometry.P()).input_grad;
  const Conv1dIo io{nullptr, w.typed_data(), nullptr, dy.typed_data(),
                    a ? a->typed_data() : nullptr, dx->typed_data()};
  const int64_t per = Conv1dChunks(geometry), n = geometry.n;
  ForChunks(pool, geometry.m * per, geometry.m * per, [=](int64_t c, int64_t, int64_t) {
    const int64_t j = c % per;
    fn(io, geometry, c / per, n * j / per, n * (j + 1) / per);
  });
  return ffi::Error::Success();
}

// Each member's `chunks` partial sums (dw, P x K or K x P where `transposed`, then db), added
// in order, into dw (M, P, K) and, where given, db (M, K).
void WriteWeightGrads(const std::vector<float>& partial, int64_t chunks, const Conv1d& g,
                      bool transposed, float* dw, float* db) {
  const int64_t size = g.P() * g.k + g.k;
  std::vector<float> member(chunks * size), total(size);
  for (int64_t m = 0; m < g.m; ++m) {
    std::copy_n(partial.begin() + m * chunks * size, chunks * size, member.begin());
    SumChunks(member, chunks, total.data());
    float* out = dw + m * g.P() * g.k;
    for (int64_t k = 0; k < g.k; ++k)
      for (int64_t p = 0; p < g.P(); ++p)
        out[p * g.k + k] = transposed ? total[k * g.P() + p] : total[p * g.k + k];
    if (db) std::copy_n(total.data() + g.P() * g.k, g.k, db + m * g.k);
  }
}

ffi::Error Conv1dWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> dy, const ffi::Buffer<ffi::F32>* a,
                            ffi::ResultBuffer<ffi::F32> dw, float* db, int64_t s, int64_t pl) {
  const auto dyd = dy.dimensions();
  const auto g = Conv1dGeometry(x.dimensions(), dw->dimensions(), dyd[dyd.size() - 2], s, pl);
  if (!g || !Conv1dFits(*g, dyd, nullptr, a)) return ffi::Error::InvalidArgument(kConv1dShapes);
  const Conv1d geometry = *g;
  const Conv1dFns fns = Best().conv1d(geometry.k, geometry.P());
  const Conv1dIo io{x.typed_data(), nullptr, nullptr, dy.typed_data(),
                    a ? a->typed_data() : nullptr, nullptr};
  const int64_t per = Conv1dChunks(geometry), rows = geometry.Rows();
  const int64_t size = geometry.P() * geometry.k + geometry.k;  // dw, then db.
  std::vector<float> partial(geometry.m * per * size);
  float* pp = partial.data();
  const bool bias = db != nullptr;
  ForChunks(pool, geometry.m * per, geometry.m * per, [=](int64_t c, int64_t, int64_t) {
    const int64_t j = c % per;
    float* slice = pp + c * size;
    fns.weight_grad(io, geometry, c / per, rows * j / per, rows * (j + 1) / per, slice,
                    bias ? slice + size - geometry.k : nullptr);
  });
  WriteWeightGrads(partial, per, geometry, fns.transposed, dw->typed_data(), db);
  return ffi::Error::Success();
}

ffi::Error Conv1dForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t s,
                             int64_t pl) {
  return Conv1dForward(pool, x, w, nullptr, y, s, pl);
}
ffi::Error Conv1dReluForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                                 ffi::ResultBuffer<ffi::F32> y, int64_t s, int64_t pl) {
  return Conv1dForward(pool, x, w, &b, y, s, pl);
}
ffi::Error Conv1dInputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                               ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx, int64_t s,
                               int64_t pl) {
  return Conv1dInputGrad(pool, dy, w, nullptr, dx, s, pl);
}
ffi::Error Conv1dReluInputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                                   ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> a,
                                   ffi::ResultBuffer<ffi::F32> dx, int64_t s, int64_t pl) {
  return Conv1dInputGrad(pool, dy, w, &a, dx, s, pl);
}
ffi::Error Conv1dWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                                int64_t s, int64_t pl) {
  return Conv1dWeightGrad(pool, x, dy, nullptr, dw, nullptr, s, pl);
}
ffi::Error Conv1dReluWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                    ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> a,
                                    ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db,
                                    int64_t s, int64_t pl) {
  if (Members(db->dimensions(), 1) != Members(dw->dimensions()))
    return ffi::Error::InvalidArgument(kConv1dShapes);
  return Conv1dWeightGrad(pool, x, dy, &a, dw, db->typed_data(), s, pl);
}

// --- Conv1dPair: two 1-D conv -> bias -> ReLU layers as one block, every member at once. ---
// The first layer's output h (M, N, OL1, K1) never reaches memory: the forward computes it per
// chunk of sequences into a buffer that stays in cache and feeds it to the second layer at once;
// the backward recomputes it per chunk and, while it is in cache, sums both layers' weight and
// bias gradients and (with `dx`) the input's gradient. Layer by layer, h and its gradient
// (MNIST-1D's first layer: 4.6 MB each for 24 members) go to memory and back, and the step needs
// twice the memory. Each layer's rows run in the same row and tile functions as alone.
struct Conv1dPairIo {
  const float *x, *w1, *b1, *w2, *b2, *y, *dy;  // y: the block's output; dy: its gradient.
  float *out, *dx;                              // Forward: y; backward: dx (or none).
};

// The two layers' geometries for `cn` sequences of one member.
std::pair<Conv1d, Conv1d> PairChunk(const Conv1d& g1, const Conv1d& g2, int64_t cn) {
  Conv1d a = g1, b = g2;
  a.m = b.m = 1;
  a.n = b.n = cn;
  return {a, b};
}

// The two layers' geometries from x, the weights and biases, the block's output dimensions and
// the attributes, or nothing where they do not fit together.
std::optional<std::pair<Conv1d, Conv1d>> PairGeometry(
    const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& w1,
    const ffi::Buffer<ffi::F32>& b1, const ffi::Buffer<ffi::F32>& w2,
    const ffi::Buffer<ffi::F32>& b2, ffi::Span<const int64_t> yd, int64_t s1, int64_t pl1,
    int64_t ol1, int64_t s2, int64_t pl2) {
  const auto g1 = Conv1dGeometry(x.dimensions(), w1.dimensions(), ol1, s1, pl1);
  if (!g1) return std::nullopt;
  const auto xd = x.dimensions();
  std::vector<int64_t> hd(xd.begin(), xd.end());  // h: (..., N, OL1, K1).
  hd[hd.size() - 2] = ol1;
  hd[hd.size() - 1] = g1->k;
  const auto g2 = Conv1dGeometry(hd, w2.dimensions(), yd[yd.size() - 2], s2, pl2);
  if (!g2 || !Conv1dFits(*g1, hd, &b1, nullptr) || !Conv1dFits(*g2, yd, &b2, nullptr))
    return std::nullopt;
  return std::pair{*g1, *g2};
}

// h = ReLU(conv1(x) + b1) for sequences [n0, n1) of member m, into `h` (their rows x K1).
void PairHidden(const Conv1dPairIo& io, const Conv1d& g1, const Conv1d& a, const Conv1dFns& f1,
                int64_t m, int64_t n0, std::vector<float>& h) {
  h.resize(a.Rows() * a.k);
  const Conv1dIo i1{io.x + (m * g1.n + n0) * g1.l * g1.c, io.w1 + m * g1.P() * g1.k,
                    io.b1 + m * g1.k, nullptr, nullptr, h.data()};
  f1.forward(i1, a, 0, 0, a.Rows());
}

ffi::Error Conv1dPairForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                                 ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                                 ffi::ResultBuffer<ffi::F32> y, int64_t s1, int64_t pl1,
                                 int64_t ol1, int64_t s2, int64_t pl2) {
  const auto g = PairGeometry(x, w1, b1, w2, b2, y->dimensions(), s1, pl1, ol1, s2, pl2);
  if (!g) return ffi::Error::InvalidArgument(kConv1dShapes);
  const Conv1d ga = g->first, gb = g->second;
  const Conv1dFns f1 = Best().conv1d(ga.k, ga.P()), f2 = Best().conv1d(gb.k, gb.P());
  const Conv1dPairIo io{x.typed_data(), w1.typed_data(), b1.typed_data(), w2.typed_data(),
                        b2.typed_data(), nullptr, nullptr, y->typed_data(), nullptr};
  // The block's chunks per member: the second layer's, on whole sequences.
  const int64_t per = Conv1dChunks(gb), n = ga.n;
  ForChunks(pool, ga.m * per, ga.m * per, [=](int64_t c, int64_t, int64_t) {
    const int64_t m = c / per, j = c % per, n0 = n * j / per, n1 = n * (j + 1) / per;
    const auto [a, b] = PairChunk(ga, gb, n1 - n0);
    std::vector<float> h;
    PairHidden(io, ga, a, f1, m, n0, h);
    const Conv1dIo i2{h.data(), io.w2 + m * gb.P() * gb.k, io.b2 + m * gb.k, nullptr, nullptr,
                      io.out + (m * gb.n + n0) * gb.ol * gb.k};
    f2.forward(i2, b, 0, 0, b.Rows());
  });
  return ffi::Error::Success();
}

// Gradients of the block: dw1, db1, dw2, db2 and, with `dx`, the input's.
ffi::Error Conv1dPairBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                              ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                              ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> dy, float* dx,
                              ffi::ResultBuffer<ffi::F32> dw1, ffi::ResultBuffer<ffi::F32> db1,
                              ffi::ResultBuffer<ffi::F32> dw2, ffi::ResultBuffer<ffi::F32> db2,
                              int64_t s1, int64_t pl1, int64_t ol1, int64_t s2, int64_t pl2) {
  const auto g = PairGeometry(x, w1, b1, w2, b2, y.dimensions(), s1, pl1, ol1, s2, pl2);
  if (!g || dy.element_count() != y.element_count() ||
      dw1->element_count() != w1.element_count() || dw2->element_count() != w2.element_count() ||
      db1->element_count() != b1.element_count() || db2->element_count() != b2.element_count())
    return ffi::Error::InvalidArgument(kConv1dShapes);
  const Conv1d ga = g->first, gb = g->second;
  const Conv1dFns f1 = Best().conv1d(ga.k, ga.P()), f2 = Best().conv1d(gb.k, gb.P());
  const Conv1dPairIo io{x.typed_data(), w1.typed_data(), b1.typed_data(), w2.typed_data(),
                        b2.typed_data(), y.typed_data(), dy.typed_data(), nullptr, dx};
  // The block's chunks per member: the second layer's, on whole sequences.
  const int64_t per = Conv1dChunks(gb), n = ga.n;
  // The first layer's weight gradient sums over its own fixed chunks of rows
  // (`Conv1dChunks`), as the unfused kernel does, where each lies within one of the block's
  // chunks (MNIST-1D's CNN): the block then gives the two layers' bits. Elsewhere it sums over
  // the block's chunks.
  const int64_t own = Conv1dChunks(ga), rows1 = ga.Rows();
  const auto block_of = [&](int64_t seq) { return ((seq + 1) * per - 1) / n; };  // Its chunk.
  bool nested = true;
  for (int64_t j = 0; j < own; ++j)
    nested = nested && block_of(rows1 * j / own / ga.ol) ==
                           block_of((rows1 * (j + 1) / own - 1) / ga.ol);
  const int64_t per1 = nested ? own : per;
  const int64_t size1 = ga.P() * ga.k + ga.k, size2 = gb.P() * gb.k + gb.k;
  std::vector<float> partial1(ga.m * per1 * size1), partial2(ga.m * per * size2);
  float *p1 = partial1.data(), *p2 = partial2.data();
  ForChunks(pool, ga.m * per, ga.m * per, [=](int64_t c, int64_t, int64_t) {
    const int64_t m = c / per, j = c % per, n0 = n * j / per, n1 = n * (j + 1) / per;
    const auto [a, b] = PairChunk(ga, gb, n1 - n0);
    std::vector<float> h, dh(a.Rows() * a.k);
    PairHidden(io, ga, a, f1, m, n0, h);
    const int64_t y0 = (m * gb.n + n0) * gb.ol * gb.k;
    float* s2 = p2 + c * size2;
    f2.weight_grad(Conv1dIo{h.data(), nullptr, nullptr, io.dy + y0, io.y + y0, nullptr}, b, 0, 0,
                   b.Rows(), s2, s2 + gb.P() * gb.k);
    f2.input_grad(Conv1dIo{nullptr, io.w2 + m * gb.P() * gb.k, nullptr, io.dy + y0, io.y + y0,
                           dh.data()},
                  b, 0, 0, b.n);
    const Conv1dIo i1{io.x + (m * ga.n + n0) * ga.l * ga.c, nullptr, nullptr, dh.data(), h.data(),
                      nullptr};
    // The first layer's chunks that start in this one's rows [r0, r1) (all of them, or itself).
    const int64_t r0 = n0 * ga.ol, r1 = n1 * ga.ol;
    for (int64_t j1 = 0; j1 < per1; ++j1) {
      const int64_t q0 = nested ? rows1 * j1 / per1 : r0;
      const int64_t q1 = nested ? rows1 * (j1 + 1) / per1 : r1;
      if (nested ? q0 < r0 || q0 >= r1 : j1 != j) continue;
      float* s1 = p1 + (m * per1 + j1) * size1;
      f1.weight_grad(i1, a, 0, q0 - r0, q1 - r0, s1, s1 + ga.P() * ga.k);
    }
    if (io.dx)
      f1.input_grad(Conv1dIo{nullptr, io.w1 + m * ga.P() * ga.k, nullptr, dh.data(), h.data(),
                             io.dx + (m * ga.n + n0) * ga.l * ga.c},
                    a, 0, 0, a.n);
  });
  WriteWeightGrads(partial1, per1, ga, f1.transposed, dw1->typed_data(), db1->typed_data());
  WriteWeightGrads(partial2, per, gb, f2.transposed, dw2->typed_data(), db2->typed_data());
  return ffi::Error::Success();
}

ffi::Error Conv1dPairBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                  ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                                  ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                                  ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> dy,
                                  ffi::ResultBuffer<ffi::F32> dw1, ffi::ResultBuffer<ffi::F32> db1,
                                  ffi::ResultBuffer<ffi::F32> dw2, ffi::ResultBuffer<ffi::F32> db2,
                                  int64_t s1, int64_t pl1, int64_t ol1, int64_t s2, int64_t pl2) {
  return Conv1dPairBackward(pool, x, w1, b1, w2, b2, y, dy, nullptr, dw1, db1, dw2, db2, s1, pl1,
                            ol1, s2, pl2);
}

ffi::Error Conv1dPairBackwardDxImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                    ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1,
                                    ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                                    ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> dy,
                                    ffi::ResultBuffer<ffi::F32> dx,
                                    ffi::ResultBuffer<ffi::F32> dw1,
                                    ffi::ResultBuffer<ffi::F32> db1,
                                    ffi::ResultBuffer<ffi::F32> dw2,
                                    ffi::ResultBuffer<ffi::F32> db2, int64_t s1, int64_t pl1,
                                    int64_t ol1, int64_t s2, int64_t pl2) {
  if (dx->element_count() != x.element_count()) return ffi::Error::InvalidArgument(kConv1dShapes);
  return Conv1dPairBackward(pool, x, w1, b1, w2, b2, y, dy, dx->typed_data(), dw1, db1, dw2, db2,
                            s1, pl1, ol1, s2, pl2);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnotesConvBlockForward, BlockForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("max"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnotesConvBlockBackward, BlockBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("max"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnotesConvWgrad, WgradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

// 1-D handlers: arrays in, results out, attributes s (stride) and pl (left padding).
#define JAXNOTES_CONV1D_HANDLER(name, impl, args, results)                                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, impl,                                                 \
                                ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() args results       \
                                    .Attr<int64_t>("s")                                     \
                                    .Attr<int64_t>("pl"));
#define JAXNOTES_ARG .Arg<ffi::Buffer<ffi::F32>>()
#define JAXNOTES_RET .Ret<ffi::Buffer<ffi::F32>>()
JAXNOTES_CONV1D_HANDLER(JaxnotesConv1dForward, Conv1dForwardImpl, JAXNOTES_ARG JAXNOTES_ARG,
                        JAXNOTES_RET)
JAXNOTES_CONV1D_HANDLER(JaxnotesConv1dReluForward, Conv1dReluForwardImpl,
                        JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG, JAXNOTES_RET)
JAXNOTES_CONV1D_HANDLER(JaxnotesConv1dInputGrad, Conv1dInputGradImpl, JAXNOTES_ARG JAXNOTES_ARG,
                        JAXNOTES_RET)
JAXNOTES_CONV1D_HANDLER(JaxnotesConv1dReluInputGrad, Conv1dReluInputGradImpl,
                        JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG, JAXNOTES_RET)
JAXNOTES_CONV1D_HANDLER(JaxnotesConv1dWeightGrad, Conv1dWeightGradImpl, JAXNOTES_ARG JAXNOTES_ARG,
                        JAXNOTES_RET)
JAXNOTES_CONV1D_HANDLER(JaxnotesConv1dReluWeightGrad, Conv1dReluWeightGradImpl,
                        JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG, JAXNOTES_RET JAXNOTES_RET)
#undef JAXNOTES_ARG
#undef JAXNOTES_RET

// The block's handlers: attributes s1, pl1, ol1 (the first layer's stride, left padding and
// output length) and s2, pl2.
#define JAXNOTES_PAIR_ATTRS                                                                    \
  .Attr<int64_t>("s1").Attr<int64_t>("pl1").Attr<int64_t>("ol1").Attr<int64_t>("s2")          \
      .Attr<int64_t>("pl2")
#define JAXNOTES_ARG .Arg<ffi::Buffer<ffi::F32>>()
#define JAXNOTES_RET .Ret<ffi::Buffer<ffi::F32>>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnotesConv1dPairForward, Conv1dPairForwardImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() JAXNOTES_ARG JAXNOTES_ARG
                                  JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_RET
                                      JAXNOTES_PAIR_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnotesConv1dPairBackward, Conv1dPairBackwardImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() JAXNOTES_ARG JAXNOTES_ARG
                                  JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG
                                      JAXNOTES_RET JAXNOTES_RET JAXNOTES_RET JAXNOTES_RET
                                          JAXNOTES_PAIR_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnotesConv1dPairBackwardDx, Conv1dPairBackwardDxImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() JAXNOTES_ARG JAXNOTES_ARG
                                  JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG JAXNOTES_ARG
                                      JAXNOTES_RET JAXNOTES_RET JAXNOTES_RET JAXNOTES_RET
                                          JAXNOTES_RET JAXNOTES_PAIR_ATTRS);
#undef JAXNOTES_PAIR_ATTRS
#undef JAXNOTES_ARG
#undef JAXNOTES_RET

// The vector width the kernels run at on this CPU, 0 where they cannot run (the library itself
// loads on any x86-64 CPU).
extern "C" int JaxnotesConvKernelLanes() { return Lanes(); }
