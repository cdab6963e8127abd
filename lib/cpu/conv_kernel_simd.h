// The kernels of conv_kernel.cc, written once over a vector type: conv_kernel.cc includes this
// file once per instruction set (AVX-512, AVX2 + FMA), inside a namespace that defines `Simd`
// (kLanes floats per vector V, a lane mask M and the operations below) under that instruction
// set's `#pragma GCC target`. Both sets add the same products in the same order, so they give
// the same bits.

// One tile: CT input channels x kLanes*KV output channels of one tap (i, j), summed over image n
// into dw, which holds the sum so far: image by image, the sums add in the same order as in one
// pass over all images.
template <int CT, int KV>
void Tile(const float* x, const float* dy, float* dw, const Geometry& g, int64_t n, int64_t i,
          int64_t j, int64_t c0, int64_t k0) {
  constexpr int L = Simd::kLanes;
  float* out = dw + ((i * g.kw + j) * g.c + c0) * g.k + k0;
  Simd::V acc[CT][KV];
  for (int a = 0; a < CT; ++a)
    for (int v = 0; v < KV; ++v) acc[a][v] = Simd::Load(out + a * g.k + L * v);
  const int64_t oh0 = Begin(i - g.pt, g.sh), oh1 = End(i - g.pt, g.sh, g.h, g.oh);
  const int64_t ow0 = Begin(j - g.pl, g.sw), ow1 = End(j - g.pl, g.sw, g.w, g.ow);
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const float* xr = x + ((n * g.h + oh * g.sh + i - g.pt) * g.w + j - g.pl) * g.c + c0;
    const float* dr = dy + (n * g.oh + oh) * g.ow * g.k + k0;
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const float* xp = xr + ow * g.sw * g.c;
      const float* dp = dr + ow * g.k;
      Simd::V d[KV];
      for (int v = 0; v < KV; ++v) d[v] = Simd::Load(dp + L * v);
      for (int a = 0; a < CT; ++a) {
        const Simd::V b = Simd::Set1(xp[a]);
        for (int v = 0; v < KV; ++v) acc[a][v] = Simd::Fma(b, d[v], acc[a][v]);
      }
    }
  }
  for (int a = 0; a < CT; ++a)
    for (int v = 0; v < KV; ++v) Simd::Store(out + a * g.k + L * v, acc[a][v]);
}

// Every tile of dw (zeros on entry) over images [n0, n1), one image at a time: its input and
// output gradient stay in the L2 cache while every tile reads them. `PickChunk` chooses CT and
// KV so that the accumulators and loads stay in the vector registers.
template <int CT, int KV>
void Chunk(const float* x, const float* dy, float* dw, const Geometry& g, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j)
        for (int64_t c0 = 0; c0 < g.c; c0 += CT)
          for (int64_t k0 = 0; k0 < g.k; k0 += Simd::kLanes * KV)
            Tile<CT, KV>(x, dy, dw, g, n, i, j, c0, k0);
}

// The conv + bias at the 4 positions of pooled output (n, i, j), kLanes channels.
template <int T>
__attribute__((always_inline)) inline void Window(const float* xp, const Block& g,
                                                  const int64_t* off, const Simd::V* wv,
                                                  Simd::V bv, int64_t n, int64_t i, int64_t j,
                                                  Simd::V* y) {
  for (int d = 0; d < 4; ++d) {
    const float* p = g.At(xp, n, 2 * i + d / 2, 2 * j + d % 2);
    y[d] = bv;
    for (int t = 0; t < T; ++t) y[d] = Simd::Fma(Simd::Set1(p[off[t]]), wv[t], y[d]);
  }
}

template <int T, bool kMax>
void BlockForward(const float* xp, const float* w, const float* b, float* out, const Block& g,
                  int64_t n0, int64_t n1) {
  int64_t off[T];
  for (int t = 0; t < T; ++t) off[t] = g.Offset(t);
  const Simd::V quarter = Simd::Set1(0.25f), zero = Simd::Zero();
  const Simd::V nan = Simd::Set1(__builtin_nanf(""));
  for (int64_t k0 = 0; k0 < g.k; k0 += Simd::kLanes) {
    Simd::V wv[T], y[4];
    for (int t = 0; t < T; ++t) wv[t] = Simd::Load(w + t * g.k + k0);
    const Simd::V bv = Simd::Load(b + k0);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t i = 0; i < g.ph; ++i)
        for (int64_t j = 0; j < g.pw; ++j) {
          Window<T>(xp, g, off, wv, bv, n, i, j, y);
          Simd::V r = zero;
          Simd::M unordered = Simd::None();  // A NaN in the window makes the output NaN, as in XLA.
          for (int d = 0; d < 4; ++d) {
            unordered = Simd::Or(unordered, Simd::Unordered(y[d]));
            const Simd::V relu = Simd::Max(zero, y[d]);
            r = kMax ? Simd::Max(r, relu) : Simd::Add(r, relu);
          }
          if (!kMax) r = Simd::Mul(r, quarter);
          Simd::Store(out + ((n * g.ph + i) * g.pw + j) * g.k + k0,
                      Simd::Select(unordered, nan, r));
        }
  }
}

// Sums, over images [n0, n1), the kernel (dw, T x K) and bias (db, K) gradients of the block.
// ReLU's gradient is lib.cpu.activations.relu's (g where y > 0, else 0, NaN included); the max
// pool's goes to the first position of the window that holds the maximum.
template <int T, bool kMax>
void BlockBackward(const float* xp, const float* w, const float* b, const float* dout, float* dw,
                   float* db, const Block& g, int64_t n0, int64_t n1) {
  int64_t off[T];
  for (int t = 0; t < T; ++t) off[t] = g.Offset(t);
  const Simd::V quarter = Simd::Set1(0.25f), zero = Simd::Zero();
  for (int64_t k0 = 0; k0 < g.k; k0 += Simd::kLanes) {
    Simd::V wv[T], gw[T], y[4];
    for (int t = 0; t < T; ++t) wv[t] = Simd::Load(w + t * g.k + k0), gw[t] = zero;
    const Simd::V bv = Simd::Load(b + k0);
    Simd::V gb = zero;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t i = 0; i < g.ph; ++i)
        for (int64_t j = 0; j < g.pw; ++j) {
          Simd::V gp = Simd::Load(dout + ((n * g.ph + i) * g.pw + j) * g.k + k0);
          if (!kMax) gp = Simd::Mul(gp, quarter);
          Window<T>(xp, g, off, wv, bv, n, i, j, y);
          Simd::V top = zero;
          if (kMax)
            for (int d = 0; d < 4; ++d) top = Simd::Max(top, Simd::Max(zero, y[d]));
          Simd::M taken = Simd::None();
          for (int d = 0; d < 4; ++d) {
            Simd::M live = Simd::Greater(y[d], zero);
            if (kMax) {
              live = Simd::And(live, Simd::AndNot(taken, Simd::Equal(y[d], top)));
              taken = Simd::Or(taken, live);
            }
            const Simd::V gy = Simd::Keep(live, gp);
            const float* p = g.At(xp, n, 2 * i + d / 2, 2 * j + d % 2);
            gb = Simd::Add(gb, gy);
            for (int t = 0; t < T; ++t) gw[t] = Simd::Fma(Simd::Set1(p[off[t]]), gy, gw[t]);
          }
        }
    for (int t = 0; t < T; ++t) Simd::Store(dw + t * g.k + k0, gw[t]);
    Simd::Store(db + k0, gb);
  }
}

// The block kernels for kh*kw*C taps (9, 18 or 27) and the pool.
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
