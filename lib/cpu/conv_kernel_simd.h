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

// --- 1-D convolutions (Conv1d below), forward, input gradient and weight gradient. ---
// Each tile is a function of its own (noinline) and reads with plain loads inside its loop:
// inlined into its caller, or with a masked load in the loop, GCC keeps the accumulators in
// memory and stores every one of them on every row.
// Row r of a member's output, (sequence n, position o), reads its input patch: P = T*C floats
// from position o*s - pl of sequence n, contiguous in NWC. Where the patch lies inside the
// sequence it is read in place; the rows at the ends, whose patches reach into the padding, read
// a copy with the padding's zeros. With `io.b`, the forward adds the bias and applies ReLU, and
// the gradients take dy where the ReLU's output `io.a` is > 0 (else 0) and sum the bias's.

// fn(std::integral_constant<int, n>) for 0 < n < Max (nothing for n = 0): a tile's last, partial
// part as a tile of that constant size, so that its accumulators stay in registers.
template <int Max, typename Fn>
void WithCount(int64_t n, Fn fn) {
  if constexpr (Max > 1) {
    if (n == Max - 1) return fn(std::integral_constant<int, Max - 1>{});
    WithCount<Max - 1>(n, fn);
  }
}

// Each row's patch in rows [r0, r1) of member m: into xm, or into `scratch` for the ends' rows.
// A reader may load `span` >= P floats from each patch (whole vectors, the values past P
// unused): a row whose span would reach past the end of x (all members) reads a copy too.
inline void Conv1dReadPatches(const Conv1dIo& io, const Conv1d& g, int64_t m, int64_t r0,
                              int64_t r1, int64_t span, std::vector<const float*>& ptr,
                              std::vector<float>& scratch) {
  const float *xm = io.x + m * g.n * g.l * g.c, *end = io.x + g.m * g.n * g.l * g.c;
  const auto in_place = [&](const Conv1dRowWalk& w) {
    return g.Inside(w.o) && xm + (w.n * g.l + g.Start(w.o)) * g.c + span <= end;
  };
  ptr.resize(r1 - r0);
  int64_t copies = 0;
  Conv1dRowWalk w(g, r0);
  for (int64_t r = r0; r < r1; ++r, w.Next()) copies += !in_place(w);
  scratch.assign(copies * span, 0.0f);
  float* next = scratch.data();
  w = Conv1dRowWalk(g, r0);
  for (int64_t r = r0; r < r1; ++r, w.Next()) {
    const float* seq = xm + w.n * g.l * g.c;
    const int64_t q = g.Start(w.o);
    if (in_place(w)) {
      ptr[r - r0] = seq + q * g.c;
      continue;
    }
    for (int64_t j = std::max<int64_t>(0, -q); j < g.t && q + j < g.l; ++j)
      std::copy_n(seq + (q + j) * g.c, g.c, next + j * g.c);
    ptr[r - r0] = next;
    next += span;
  }
}

// dy of rows [r0, r1) of member m, where the ReLU's output is > 0 (else 0) when the call fuses
// one: into `masked`, else in place. With `db`, adds the rows' (masked) dy into it, row by row.
// A reader may load `slack` floats past the rows' end (whole vectors, the values unused): where
// that would pass the end of dy, the rows are read from a copy with room for them.
inline const float* Conv1dOutputGrad(const Conv1dIo& io, const Conv1d& g, int64_t m, int64_t r0,
                                     int64_t r1, std::vector<float>& masked, float* db,
                                     int64_t slack = 0) {
  const int64_t size = (r1 - r0) * g.k, first = (m * g.Rows() + r0) * g.k;
  const float* dy = io.dy + first;
  if (io.a) {
    masked.resize(size + slack);
    const float* a = io.a + first;
    for (int64_t e = 0; e < size; ++e) masked[e] = a[e] > 0.0f ? dy[e] : 0.0f;
    dy = masked.data();
  } else if (first + size + slack > g.m * g.Rows() * g.k) {
    masked.assign(size + slack, 0.0f);
    std::copy_n(dy, size, masked.begin());
    dy = masked.data();
  }
  if (db) {
    std::fill(db, db + g.k, 0.0f);
    for (int64_t r = 0; r < r1 - r0; ++r)
      for (int64_t k = 0; k < g.k; ++k) db[k] += dy[r * g.k + k];
  }
  return dy;
}

// Output rows [r, r+R) x kLanes*KV channels from k0: each row's patch times the packed weights
// (P x kp, kp a multiple of kLanes*KV, zeros past K); then + bias and ReLU where `bias` is given.
template <int R, int KV>
[[gnu::noinline]] void Conv1dForwardTile(const float* const* patch, const float* wpack,
                                         const float* bias, float* yr, const Conv1d& g,
                                         int64_t kp, int64_t k0) {
  constexpr int L = Simd::kLanes;
  Simd::V acc[R][KV];
  for (int a = 0; a < R; ++a)
    for (int v = 0; v < KV; ++v) acc[a][v] = Simd::Zero();
  for (int64_t p = 0; p < g.P(); ++p) {
    Simd::V wv[KV];
    for (int v = 0; v < KV; ++v) wv[v] = Simd::Load(wpack + p * kp + k0 + L * v);
    for (int a = 0; a < R; ++a) {
      const Simd::V b = Simd::Set1(patch[a][p]);
      for (int v = 0; v < KV; ++v) acc[a][v] = Simd::Fma(b, wv[v], acc[a][v]);
    }
  }
  if (bias) {
    const Simd::V zero = Simd::Zero();
    for (int v = 0; v < KV; ++v) {
      const Simd::V bv = Simd::Load(bias + k0 + L * v);
      // max(0, y) is y where y is NaN: a diverging member's loss stays NaN.
      for (int a = 0; a < R; ++a) acc[a][v] = Simd::Max(zero, Simd::Add(acc[a][v], bv));
    }
  }
  for (int a = 0; a < R; ++a)
    for (int v = 0; v < KV; ++v) {
      const int64_t k = k0 + L * v;
      if (k < g.k) Simd::StoreN(yr + a * g.k + k, acc[a][v], std::min<int64_t>(L, g.k - k));
    }
}

// Rows [r0, r1) of member m's output.
template <int KV>
void Conv1dForwardRows(const Conv1dIo& io, const Conv1d& g, int64_t m, int64_t r0, int64_t r1) {
  constexpr int L = Simd::kLanes, R = Simd::kAccumulators / KV;
  const int64_t kp = (g.k + L * KV - 1) / (L * KV) * (L * KV);
  std::vector<float> wpack(g.P() * kp, 0.0f), bias(kp, 0.0f), scratch;
  const float* wm = io.w + m * g.P() * g.k;
  for (int64_t p = 0; p < g.P(); ++p) std::copy_n(wm + p * g.k, g.k, wpack.data() + p * kp);
  if (io.b) std::copy_n(io.b + m * g.k, g.k, bias.data());
  std::vector<const float*> patch;
  Conv1dReadPatches(io, g, m, r0, r1, g.P(), patch, scratch);
  float* ym = io.out + m * g.Rows() * g.k;
  const float* b = io.b ? bias.data() : nullptr;
  for (int64_t k0 = 0; k0 < g.k; k0 += L * KV) {
    int64_t r = r0;
    for (; r + R <= r1; r += R)
      Conv1dForwardTile<R, KV>(patch.data() + r - r0, wpack.data(), b, ym + r * g.k, g, kp, k0);
    // The last rows as one tile of that many: one at a time, each would load the weights.
    WithCount<R>(r1 - r, [&](auto rows) {
      Conv1dForwardTile<rows, KV>(patch.data() + r - r0, wpack.data(), b, ym + r * g.k, g, kp, k0);
    });
  }
}

// The input gradient of rows [r, r+R): each row's patch gradient, its dy (rows dyr, K apart)
// times the weights (packed transposed, K x pp, pp a multiple of kLanes*PV), PV vectors from
// p0, added into the row's patch of dx (`dst`). Rows add in order, so overlapping patches sum
// in the same order however the work is cut.
template <int R, int PV>
[[gnu::noinline]] void Conv1dInputGradTile(const float* dyr, const float* wt, float* const* dst,
                                           const Conv1d& g, int64_t pp, int64_t p0) {
  constexpr int L = Simd::kLanes;
  Simd::V acc[R][PV];
  for (int a = 0; a < R; ++a)
    for (int v = 0; v < PV; ++v) acc[a][v] = Simd::Zero();
  for (int64_t k = 0; k < g.k; ++k) {
    Simd::V wv[PV];
    for (int v = 0; v < PV; ++v) wv[v] = Simd::Load(wt + k * pp + p0 + L * v);
    for (int a = 0; a < R; ++a) {
      const Simd::V b = Simd::Set1(dyr[a * g.k + k]);
      for (int v = 0; v < PV; ++v) acc[a][v] = Simd::Fma(b, wv[v], acc[a][v]);
    }
  }
  for (int a = 0; a < R; ++a) {
    float* patch = dst[a];
    for (int v = 0; v < PV; ++v) {
      const int64_t p = p0 + L * v;
      if (p >= g.P()) break;
      const int64_t count = std::min<int64_t>(L, g.P() - p);
      Simd::StoreN(patch + p, Simd::Add(Simd::LoadN(patch + p, count), acc[a][v]), count);
    }
  }
}

// The input's gradient of sequences [n0, n1) of member m (written whole). The ends' rows add
// into copies of their patches, which then add into dx where they lie inside the sequence.
template <int PV>
void Conv1dInputGradRows(const Conv1dIo& io, const Conv1d& g, int64_t m, int64_t n0,
                         int64_t n1) {
  constexpr int L = Simd::kLanes, R = Simd::kAccumulators / PV;
  const int64_t pp = (g.P() + L * PV - 1) / (L * PV) * (L * PV);
  std::vector<float> wt(g.k * pp, 0.0f), masked;
  const float* wm = io.w + m * g.P() * g.k;
  for (int64_t p = 0; p < g.P(); ++p)
    for (int64_t k = 0; k < g.k; ++k) wt[k * pp + p] = wm[p * g.k + k];
  const int64_t r0 = n0 * g.ol, r1 = n1 * g.ol;
  const float* dy = Conv1dOutputGrad(io, g, m, r0, r1, masked, nullptr);
  float* dxm = io.out + m * g.n * g.l * g.c;
  std::fill(dxm + n0 * g.l * g.c, dxm + n1 * g.l * g.c, 0.0f);
  std::vector<float*> dst(r1 - r0);
  int64_t ends = 0;
  for (int64_t o = 0; o < g.ol; ++o) ends += !g.Inside(o);
  std::vector<float> scratch((n1 - n0) * ends * g.P(), 0.0f);
  float* next = scratch.data();
  Conv1dRowWalk w(g, r0);
  for (int64_t r = r0; r < r1; ++r, w.Next()) {
    if (g.Inside(w.o)) {
      dst[r - r0] = dxm + (w.n * g.l + g.Start(w.o)) * g.c;
    } else {
      dst[r - r0] = next;
      next += g.P();
    }
  }
  int64_t r = r0;
  for (; r + R <= r1; r += R)
    for (int64_t p0 = 0; p0 < g.P(); p0 += L * PV)
      Conv1dInputGradTile<R, PV>(dy + (r - r0) * g.k, wt.data(), dst.data() + r - r0, g, pp, p0);
  for (; r < r1; ++r)
    for (int64_t p0 = 0; p0 < g.P(); p0 += L * PV)
      Conv1dInputGradTile<1, PV>(dy + (r - r0) * g.k, wt.data(), dst.data() + r - r0, g, pp, p0);
  next = scratch.data();
  for (Conv1dRowWalk w(g, r0); w.n < n1; w.Next()) {
    if (g.Inside(w.o)) continue;
    float* seq = dxm + w.n * g.l * g.c;
    const int64_t q = g.Start(w.o);
    for (int64_t j = std::max<int64_t>(0, -q); j < g.t && q + j < g.l; ++j)
      for (int64_t c = 0; c < g.c; ++c) seq[(q + j) * g.c + c] += next[j * g.c + c];
    next += g.P();
  }
}

// The weight gradient of member m summed over rows [r0, r1) into dw (P x K, written whole):
// PT patch values x KV vectors of dy per tile, row after row; with a fused bias, its gradient
// into db (K). PN of the tile's PT values hold (PN = PT but in the last tile); every bound is a
// constant, so that the accumulators stay in registers.
template <int PN, int KV>
[[gnu::noinline]] void Conv1dWeightGradTile(const float* const* patch, const float* dy, float* dw,
                                            const Conv1d& g, int64_t rows, int64_t p0,
                                            int64_t k0) {
  constexpr int L = Simd::kLanes;
  int count[KV];
  for (int v = 0; v < KV; ++v)
    count[v] = static_cast<int>(std::clamp<int64_t>(g.k - k0 - L * v, 0, L));
  Simd::V acc[PN][KV];
  for (int a = 0; a < PN; ++a)
    for (int v = 0; v < KV; ++v) acc[a][v] = Simd::Zero();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = patch[r] + p0;
    Simd::V d[KV];
    for (int v = 0; v < KV; ++v) d[v] = Simd::Load(dy + r * g.k + k0 + L * v);
    for (int a = 0; a < PN; ++a) {
      const Simd::V b = Simd::Set1(x[a]);
      for (int v = 0; v < KV; ++v) acc[a][v] = Simd::Fma(b, d[v], acc[a][v]);
    }
  }
  for (int a = 0; a < PN; ++a)
    for (int v = 0; v < KV; ++v)
      if (count[v]) Simd::StoreN(dw + (p0 + a) * g.k + k0 + L * v, acc[a][v], count[v]);
}

template <int PT, int KV>
void Conv1dWeightGradRows(const Conv1dIo& io, const Conv1d& g, int64_t m, int64_t r0, int64_t r1,
                          float* dw, float* db) {
  constexpr int L = Simd::kLanes;
  std::vector<const float*> patch;
  std::vector<float> scratch, masked;
  Conv1dReadPatches(io, g, m, r0, r1, g.P(), patch, scratch);
  const float* dy = Conv1dOutputGrad(io, g, m, r0, r1, masked, db, L * KV);
  for (int64_t k0 = 0; k0 < g.k; k0 += L * KV) {
    int64_t p0 = 0;
    for (; p0 + PT <= g.P(); p0 += PT)
      Conv1dWeightGradTile<PT, KV>(patch.data(), dy, dw, g, r1 - r0, p0, k0);
    WithCount<PT>(g.P() - p0, [&](auto pn) {
      Conv1dWeightGradTile<pn, KV>(patch.data(), dy, dw, g, r1 - r0, p0, k0);
    });
  }
}

// The weight gradient as above with vectors across the patch (P) instead: PV vectors of patch
// values x KT output channels per tile, into dwt (K x P, written whole). Where P fills its
// vectors better than K does (the MNIST-1D CNN: P = 75 in 5 vectors of 16, K = 25 in 2).
// KN of the tile's KT channels hold (KN = KT but in the last tile); every bound is a constant,
// so that the accumulators stay in registers.
template <int PV, int KT, int KN>
[[gnu::noinline]] void Conv1dWeightGradTileT(const float* const* patch, const float* dy,
                                             float* dwt, const Conv1d& g, int64_t rows,
                                             int64_t p0, int64_t k0) {
  constexpr int L = Simd::kLanes;
  int64_t count[PV];
  for (int v = 0; v < PV; ++v) count[v] = std::clamp<int64_t>(g.P() - p0 - L * v, 0, L);
  Simd::V acc[KN][PV];
  for (int a = 0; a < KN; ++a)
    for (int v = 0; v < PV; ++v) acc[a][v] = Simd::Zero();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = patch[r] + p0;
    Simd::V xv[PV];
    for (int v = 0; v < PV; ++v) xv[v] = Simd::Load(x + L * v);
    const float* d = dy + r * g.k + k0;
    for (int a = 0; a < KN; ++a) {
      const Simd::V b = Simd::Set1(d[a]);
      for (int v = 0; v < PV; ++v) acc[a][v] = Simd::Fma(xv[v], b, acc[a][v]);
    }
  }
  for (int a = 0; a < KN; ++a)
    for (int v = 0; v < PV; ++v)
      if (count[v]) Simd::StoreN(dwt + (k0 + a) * g.P() + p0 + L * v, acc[a][v], count[v]);
}

template <int PV, int KT>
void Conv1dWeightGradRowsT(const Conv1dIo& io, const Conv1d& g, int64_t m, int64_t r0,
                           int64_t r1, float* dwt, float* db) {
  constexpr int L = Simd::kLanes;
  std::vector<const float*> patch;
  std::vector<float> scratch, masked;
  Conv1dReadPatches(io, g, m, r0, r1, (g.P() + L * PV - 1) / (L * PV) * (L * PV), patch, scratch);
  const float* dy = Conv1dOutputGrad(io, g, m, r0, r1, masked, db);
  for (int64_t p0 = 0; p0 < g.P(); p0 += L * PV) {
    int64_t k0 = 0;
    for (; k0 + KT <= g.k; k0 += KT)
      Conv1dWeightGradTileT<PV, KT, KT>(patch.data(), dy, dwt, g, r1 - r0, p0, k0);
    WithCount<KT>(g.k - k0, [&](auto kn) {
      Conv1dWeightGradTileT<PV, KT, kn>(patch.data(), dy, dwt, g, r1 - r0, p0, k0);
    });
  }
}

template <template <int> class Fn>
auto ByVectors(int64_t v) {
  switch (v) {
    case 1: return Fn<1>::Run;
    case 2: return Fn<2>::Run;
    case 3: return Fn<3>::Run;
    case 4: return Fn<4>::Run;
    case 5: return Fn<5>::Run;
    default: return Fn<6>::Run;
  }
}
template <int V>
struct ForwardRows {
  static constexpr Conv1dFn Run = &Conv1dForwardRows<V>;
};
template <int V>
struct InputGradRows {
  static constexpr Conv1dFn Run = &Conv1dInputGradRows<V>;
};
template <int V>
struct WeightGradRows {
  static constexpr Conv1dWgradFn Run = &Conv1dWeightGradRows<Simd::kAccumulators / V, V>;
};
// As many out-channels per tile as leave registers for the V loads and a broadcast: MNIST-1D's
// K = 25 then splits into 5 tiles of 5, with no tile of 1 whose loads outnumber its products.
template <int V>
struct WeightGradRowsT {
  static constexpr Conv1dWgradFn Run =
      &Conv1dWeightGradRowsT<V, std::max(Simd::kAccumulators / V, (Simd::kRegisters - 1 - V) / V)>;
};

// The 1-D kernels for K output channels and P patch values: as many vectors across as fit (at
// most kAccumulators / 4, so that a tile has 4 rows or more), the registers' rest for rows. The
// weight gradient runs across whichever of K and P fills its vectors better; `transposed` says
// it writes K x P.
inline Conv1dFns PickConv1d(int64_t k, int64_t p) {
  constexpr int L = Simd::kLanes, kMaxV = Simd::kAccumulators / 4;
  const int64_t kv = std::min<int64_t>((k + L - 1) / L, kMaxV);
  const int64_t pv = std::min<int64_t>((p + L - 1) / L, kMaxV);
  // The share of the lanes that hold values, per tile across K or across P.
  const double fill_k = double(k) / ((k + L * kv - 1) / (L * kv) * L * kv);
  const double fill_p = double(p) / ((p + L * pv - 1) / (L * pv) * L * pv);
  Conv1dFns f;
  f.forward = ByVectors<ForwardRows>(kv);
  f.input_grad = ByVectors<InputGradRows>(pv);
  f.transposed = fill_p > fill_k;
  f.weight_grad = f.transposed ? ByVectors<WeightGradRowsT>(pv) : ByVectors<WeightGradRows>(kv);
  return f;
}
