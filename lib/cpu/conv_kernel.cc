// Convolution kernels for XLA:CPU, as XLA FFI handlers (AVX-512): lib/cpu/conv_kernel.py builds this
// file and lib/cpu/conv.py calls it. Two of them:
//
// 1. The weight gradient of a 2-D convolution (NHWC input, HWIO kernel, no dilation, one group):
//
//      dw[i, j, c, k] = sum over n, oh, ow of x[n, oh*sh + i - pt, ow*sw + j - pl, c] * dy[n, oh, ow, k]
//
//    XLA:CPU computes it as a convolution whose window is the whole output (Eigen, about 115
//    GFLOP/s on the MNIST CNN's second layer); here each (tap, channels, out-channels) tile of dw
//    is summed in registers straight from x and dy, with no patches in memory (about 190 GFLOP/s,
//    the machine's matmul speed, on 2 cores).
// 2. A network's first block, conv + bias -> ReLU -> 2x2 pool, forward and backward (below).
//
// Both cut the batch into a fixed number of chunks whatever the thread count; each chunk sums
// into its own buffer and the buffers are added in order, so the result does not depend on how
// XLA's threads pick up the chunks.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
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

// One tile: CT input channels x 16*KV output channels of one tap (i, j), summed over images [n0, n1).
template <int CT, int KV>
__attribute__((target("avx512f"))) void Tile(const float* x, const float* dy, float* dw,
                                             const Geometry& g, int64_t n0, int64_t n1, int64_t i,
                                             int64_t j, int64_t c0, int64_t k0) {
  __m512 acc[CT][KV];
  for (int a = 0; a < CT; ++a)
    for (int v = 0; v < KV; ++v) acc[a][v] = _mm512_setzero_ps();
  const int64_t oh0 = Begin(i - g.pt, g.sh), oh1 = End(i - g.pt, g.sh, g.h, g.oh);
  const int64_t ow0 = Begin(j - g.pl, g.sw), ow1 = End(j - g.pl, g.sw, g.w, g.ow);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const float* xr = x + ((n * g.h + oh * g.sh + i - g.pt) * g.w + j - g.pl) * g.c + c0;
      const float* dr = dy + (n * g.oh + oh) * g.ow * g.k + k0;
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const float* xp = xr + ow * g.sw * g.c;
        const float* dp = dr + ow * g.k;
        __m512 d[KV];
        for (int v = 0; v < KV; ++v) d[v] = _mm512_loadu_ps(dp + 16 * v);
        for (int a = 0; a < CT; ++a) {
          const __m512 b = _mm512_set1_ps(xp[a]);
          for (int v = 0; v < KV; ++v) acc[a][v] = _mm512_fmadd_ps(b, d[v], acc[a][v]);
        }
      }
    }
  }
  float* out = dw + ((i * g.kw + j) * g.c + c0) * g.k + k0;
  for (int a = 0; a < CT; ++a)
    for (int v = 0; v < KV; ++v) _mm512_storeu_ps(out + a * g.k + 16 * v, acc[a][v]);
}

// Every tile of dw over images [n0, n1): CT*KV accumulators (16 at most) plus KV loads stay in
// the 32 vector registers; tiles are as wide in out-channels as K allows.
template <int CT, int KV>
void Chunk(const float* x, const float* dy, float* dw, const Geometry& g, int64_t n0, int64_t n1) {
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j)
      for (int64_t c0 = 0; c0 < g.c; c0 += CT)
        for (int64_t k0 = 0; k0 < g.k; k0 += 16 * KV) Tile<CT, KV>(x, dy, dw, g, n0, n1, i, j, c0, k0);
}

using ChunkFn = void (*)(const float*, const float*, float*, const Geometry&, int64_t, int64_t);

ChunkFn PickChunk(int64_t c, int64_t k) {
  if (k % 64 == 0) return &Chunk<4, 4>;
  if (k % 32 == 0) return c % 8 == 0 ? &Chunk<8, 2> : &Chunk<4, 2>;
  return c % 16 == 0 ? &Chunk<16, 1> : c % 8 == 0 ? &Chunk<8, 1> : &Chunk<4, 1>;
}

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
  const ChunkFn chunk = PickChunk(g.c, g.k);
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

// The first block of an image CNN, conv (few input channels) + bias -> ReLU -> 2x2 pool (average
// or max, stride 2), as one pass: XLA writes the conv's output, the ReLU's and their gradients
// (12.8 MB each for the MNIST CNN) to memory; here they live in registers, and the backward pass
// recomputes the conv (9 multiply-adds per value) instead of reading it back. T = kh*kw*C taps,
// 16 output channels per pass; xp is the input padded for the conv ('SAME'), (N, H+kh-1, W+kw-1, C).
struct Block {
  int64_t n, hp, wp, c, kh, kw, k, ph, pw;  // ph, pw: pooled output size.
  int64_t Offset(int64_t t) const { return ((t / c / kw) * wp + (t / c) % kw) * c + t % c; }
  const float* At(const float* xp, int64_t n_, int64_t h, int64_t w) const {
    return xp + ((n_ * hp + h) * wp + w) * c;
  }
};

// The conv + bias at the 4 positions of pooled output (n, i, j), 16 channels from k0.
template <int T>
__attribute__((target("avx512f"), always_inline)) inline void Window(
    const float* xp, const Block& g, const int64_t* off, const __m512* wv, __m512 bv, int64_t n,
    int64_t i, int64_t j, __m512* y) {
  for (int d = 0; d < 4; ++d) {
    const float* p = g.At(xp, n, 2 * i + d / 2, 2 * j + d % 2);
    y[d] = bv;
    for (int t = 0; t < T; ++t) y[d] = _mm512_fmadd_ps(_mm512_set1_ps(p[off[t]]), wv[t], y[d]);
  }
}

template <int T, bool kMax>
__attribute__((target("avx512f"))) void BlockForward(const float* xp, const float* w,
                                                     const float* b, float* out, const Block& g,
                                                     int64_t n0, int64_t n1) {
  int64_t off[T];
  for (int t = 0; t < T; ++t) off[t] = g.Offset(t);
  const __m512 quarter = _mm512_set1_ps(0.25f), zero = _mm512_setzero_ps();
  const __m512 nan = _mm512_set1_ps(__builtin_nanf(""));
  for (int64_t k0 = 0; k0 < g.k; k0 += 16) {
    __m512 wv[T], y[4];
    for (int t = 0; t < T; ++t) wv[t] = _mm512_loadu_ps(w + t * g.k + k0);
    const __m512 bv = _mm512_loadu_ps(b + k0);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t i = 0; i < g.ph; ++i)
        for (int64_t j = 0; j < g.pw; ++j) {
          Window<T>(xp, g, off, wv, bv, n, i, j, y);
          __m512 r = zero;
          __mmask16 unordered = 0;  // A NaN in the window makes the output NaN, as in XLA.
          for (int d = 0; d < 4; ++d) {
            unordered |= _mm512_cmp_ps_mask(y[d], y[d], _CMP_UNORD_Q);
            const __m512 relu = _mm512_max_ps(zero, y[d]);
            r = kMax ? _mm512_max_ps(r, relu) : _mm512_add_ps(r, relu);
          }
          if (!kMax) r = _mm512_mul_ps(r, quarter);
          _mm512_storeu_ps(out + ((n * g.ph + i) * g.pw + j) * g.k + k0,
                           _mm512_mask_mov_ps(r, unordered, nan));
        }
  }
}

// Sums, over images [n0, n1), the kernel (dw, T x K) and bias (db, K) gradients of the block.
// ReLU's gradient is lib.cpu.activations.relu's (g where y > 0, else 0, NaN included); the max
// pool's goes to the first position of the window that holds the maximum.
template <int T, bool kMax>
__attribute__((target("avx512f"))) void BlockBackward(const float* xp, const float* w,
                                                      const float* b, const float* dout,
                                                      float* dw, float* db, const Block& g,
                                                      int64_t n0, int64_t n1) {
  int64_t off[T];
  for (int t = 0; t < T; ++t) off[t] = g.Offset(t);
  const __m512 quarter = _mm512_set1_ps(0.25f), zero = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < g.k; k0 += 16) {
    __m512 wv[T], gw[T], y[4];
    for (int t = 0; t < T; ++t) wv[t] = _mm512_loadu_ps(w + t * g.k + k0), gw[t] = zero;
    const __m512 bv = _mm512_loadu_ps(b + k0);
    __m512 gb = zero;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t i = 0; i < g.ph; ++i)
        for (int64_t j = 0; j < g.pw; ++j) {
          __m512 gp = _mm512_loadu_ps(dout + ((n * g.ph + i) * g.pw + j) * g.k + k0);
          if (!kMax) gp = _mm512_mul_ps(gp, quarter);
          Window<T>(xp, g, off, wv, bv, n, i, j, y);
          __m512 top = zero;
          if (kMax)
            for (int d = 0; d < 4; ++d) top = _mm512_max_ps(top, _mm512_max_ps(zero, y[d]));
          __mmask16 taken = 0;
          for (int d = 0; d < 4; ++d) {
            __mmask16 live = _mm512_cmp_ps_mask(y[d], zero, _CMP_GT_OQ);
            if (kMax) {
              live &= ~taken & _mm512_cmp_ps_mask(y[d], top, _CMP_EQ_OQ);
              taken |= live;
            }
            const __m512 gy = _mm512_maskz_mov_ps(live, gp);
            const float* p = g.At(xp, n, 2 * i + d / 2, 2 * j + d % 2);
            gb = _mm512_add_ps(gb, gy);
            for (int t = 0; t < T; ++t) gw[t] = _mm512_fmadd_ps(_mm512_set1_ps(p[off[t]]), gy, gw[t]);
          }
        }
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(dw + t * g.k + k0, gw[t]);
    _mm512_storeu_ps(db + k0, gb);
  }
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

// The kernel for kh*kw*C taps (9, 18 or 27) and the pool.
template <template <int, bool> class Fn>
auto Pick(int64_t taps, bool max) {
  if (taps == 9) return max ? Fn<9, true>::Run : Fn<9, false>::Run;
  if (taps == 18) return max ? Fn<18, true>::Run : Fn<18, false>::Run;
  return max ? Fn<27, true>::Run : Fn<27, false>::Run;
}
template <int T, bool kMax>
struct Forward {
  static constexpr auto Run = &BlockForward<T, kMax>;
};
template <int T, bool kMax>
struct Backward {
  static constexpr auto Run = &BlockBackward<T, kMax>;
};

constexpr char kBlockShapes[] =
    "conv block: needs padded x (N,H+KH-1,W+KW-1,C), w (KH,KW,C,K), b (K) with H, W even, "
    "KH*KW*C in {9, 18, 27}, K % 16 == 0";

ffi::Error BlockForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                            ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                            ffi::ResultBuffer<ffi::F32> out, bool max) {
  const auto g = BlockGeometry(xp.dimensions(), w.dimensions());
  if (!g) return ffi::Error::InvalidArgument(kBlockShapes);
  const auto fn = Pick<Forward>(g->kh * g->kw * g->c, max);
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
  const auto fn = Pick<Backward>(taps, max);
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

// Whether this CPU runs the AVX-512 code above (the library itself loads on any x86-64 CPU).
extern "C" int JaxnotesConvKernelSupported() { return __builtin_cpu_supports("avx512f"); }
