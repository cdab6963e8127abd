// tests/test_conv.py builds and runs this: lib/cpu/conv_kernel.cc's 1-D kernels, for both
// instruction sets, against a scalar loop (JAX runs only the widest set a CPU has).
#include "conv_kernel.cc"
#include <cstdio>
#include <cstdlib>
#include <cmath>
int main() {
  struct Case { int64_t n, l, c, t, k, s, pl, pr; };
  Case cases[] = {{7, 40, 1, 5, 25, 2, 1, 1}, {5, 19, 25, 3, 25, 2, 1, 1}, {3, 30, 8, 5, 70, 1, 4, 0}, {2, 9, 130, 1, 3, 1, 0, 0}, {4, 33, 40, 4, 17, 3, 2, 2}, {3, 10, 3, 3, 9, 2, 1, 1}, {2, 4, 3, 7, 5, 1, 3, 3}};
  int bad = 0;
  for (auto cs : cases) {
    for (int fused = 0; fused < 2; ++fused) {
      const int64_t M = 2, ol = (cs.l + cs.pl + cs.pr - cs.t) / cs.s + 1;
      Conv1d g{M, cs.n, cs.l, cs.c, ol, cs.k, cs.t, cs.s, cs.pl};
      std::vector<float> x(M * cs.n * cs.l * cs.c), w(M * g.P() * cs.k), dy(M * g.Rows() * cs.k), b(M * cs.k), a(dy.size());
      for (auto& v : x) v = rand() / float(RAND_MAX) - 0.5f;
      for (auto& v : w) v = rand() / float(RAND_MAX) - 0.5f;
      for (auto& v : dy) v = rand() / float(RAND_MAX) - 0.5f;
      for (auto& v : b) v = rand() / float(RAND_MAX) - 0.5f;
      // Scalar reference: y = conv (+ b, ReLU); dx, dw, db from dy masked by y > 0.
      std::vector<float> y(dy.size(), 0), rdx(x.size(), 0), rdw(w.size(), 0), rdb(b.size(), 0);
      auto X = [&](int64_t m, int64_t n, int64_t pos, int64_t c) { return (pos < 0 || pos >= cs.l) ? -1 : ((m * cs.n + n) * cs.l + pos) * cs.c + c; };
      for (int64_t m = 0; m < M; ++m) for (int64_t n = 0; n < cs.n; ++n) for (int64_t o = 0; o < ol; ++o) for (int64_t k = 0; k < cs.k; ++k) {
        float acc = 0;
        for (int64_t t = 0; t < cs.t; ++t) for (int64_t c = 0; c < cs.c; ++c) { int64_t xi = X(m, n, o * cs.s + t - cs.pl, c); if (xi >= 0) acc += x[xi] * w[(m * g.P() + t * cs.c + c) * cs.k + k]; }
        const int64_t yi = ((m * cs.n + n) * ol + o) * cs.k + k;
        y[yi] = fused ? std::max(0.0f, acc + b[m * cs.k + k]) : acc;
        const float d = (!fused || y[yi] > 0) ? dy[yi] : 0.0f;
        rdb[m * cs.k + k] += d;
        for (int64_t t = 0; t < cs.t; ++t) for (int64_t c = 0; c < cs.c; ++c) { int64_t xi = X(m, n, o * cs.s + t - cs.pl, c); if (xi >= 0) { rdx[xi] += d * w[(m * g.P() + t * cs.c + c) * cs.k + k]; rdw[(m * g.P() + t * cs.c + c) * cs.k + k] += x[xi] * d; } }
      }
      double worst = 0;
      for (int isa = 0; isa < 2; ++isa) {
        const Conv1dFns f = isa ? avx2::PickConv1d(cs.k, g.P()) : avx512::PickConv1d(cs.k, g.P());
        std::vector<float> out(y.size()), dx(x.size()), raw(g.P() * cs.k), db(cs.k);
        Conv1dIo io{x.data(), w.data(), fused ? b.data() : nullptr, dy.data(), fused ? y.data() : nullptr, out.data()};
        for (int64_t m = 0; m < M; ++m) f.forward(io, g, m, 0, g.Rows());
        for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, (double)std::fabs(out[i] - y[i]));
        io.out = dx.data();
        for (int64_t m = 0; m < M; ++m) f.input_grad(io, g, m, 0, cs.n);
        for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, (double)std::fabs(dx[i] - rdx[i]));
        for (int64_t m = 0; m < M; ++m) {
          f.weight_grad(io, g, m, 0, g.Rows(), raw.data(), fused ? db.data() : nullptr);
          for (int64_t p = 0; p < g.P(); ++p) for (int64_t k = 0; k < cs.k; ++k)
            worst = std::max(worst, (double)std::fabs((f.transposed ? raw[k * g.P() + p] : raw[p * cs.k + k]) - rdw[(m * g.P() + p) * cs.k + k]));
          if (fused) for (int64_t k = 0; k < cs.k; ++k) worst = std::max(worst, (double)std::fabs(db[k] - rdb[m * cs.k + k]));
        }
      }
      printf("n=%ld l=%ld c=%ld t=%ld k=%ld s=%ld pad=(%ld,%ld) fused=%d worst |diff| %.2e\n", cs.n, cs.l, cs.c, cs.t, cs.k, cs.s, cs.pl, cs.pr, fused, worst);
      bad += worst > 1e-3;
    }
  }
  return bad;
}
