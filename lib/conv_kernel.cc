// The weight gradient of a 2-D convolution (NHWC input, HWIO kernel, no dilation, one group) as
// an XLA FFI handler for CPU: lib/conv_kernel.py builds it and lib/conv.py calls it.
//
//   dw[i, j, c, k] = sum over n, oh, ow of x[n, oh*sh + i - pt, ow*sw + j - pl, c] * dy[n, oh, ow, k]
//
// XLA:CPU computes this as a convolution whose window is the whole output (Eigen, about 115 GFLOP/s
// on the MNIST CNN's second layer); here each (tap, channels, out-channels) tile of dw is summed in
// AVX-512 registers straight from x and dy, with no patches in memory (about 190 GFLOP/s, the
// machine's matmul speed, on 2 cores). The batch is cut into a fixed number of chunks whatever the
// thread count, each chunk sums into its own buffer and the chunks are added in order: the result
// does not depend on how XLA's threads pick up the chunks.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
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

struct Work {
  std::atomic<int64_t> next{0}, done{0};
  int64_t chunks = 0, size = 0;
  std::vector<float> partial;  // chunks x size
};

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
  auto work = std::make_shared<Work>();
  work->chunks = std::min<int64_t>(g.n, 16);
  work->size = g.kh * g.kw * g.c * g.k;
  work->partial.resize(work->chunks * work->size);
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  // Tasks that start after every chunk is taken return at once, so this call never waits for a
  // task the pool has not started: it takes chunks itself until none is left.
  auto run = [work, chunk, g, xp, dyp]() {
    for (int64_t c; (c = work->next.fetch_add(1)) < work->chunks;) {
      chunk(xp, dyp, work->partial.data() + c * work->size, g, g.n * c / work->chunks,
            g.n * (c + 1) / work->chunks);
      work->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([run] { run(); });
  run();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
  float* out = dw->typed_data();
  std::copy_n(work->partial.data(), work->size, out);
  for (int64_t c = 1; c < work->chunks; ++c) {
    const float* p = work->partial.data() + c * work->size;
    for (int64_t e = 0; e < work->size; ++e) out[e] += p[e];
  }
  return ffi::Error::Success();
}

}  // namespace

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
