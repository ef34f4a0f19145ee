// Depthwise conv + BN + act kernel passes on channels-last (NHWC) data (NCHW: dwconv_bn_act_nchw_kernels.h).
// DwconvKernels (fb_cpu_kernels.h). NO include guard: included once per ISA namespace, after
// fb_cpu_math.h, by dwconv_bn_act_cpu_<isa>.cpp (fb_cpu_isa_copy.h). All passes are deterministic:
// reductions go to per-block partials (a fixed partition of the N * H_out output rows) that the
// host combines in block order.
//
// Weights are tap-major: wt[(kh * K + kw) * C + c] in the accumulation dtype.

// out[c] = init[c] + sum_t xs[t][c] * ws[t][c] for c in [c0, c0 + NV * lanes): NV accumulator
// vectors held in registers across all taps.
template <int NV, typename in_t, typename acc_t>
inline void gather_block(const in_t* const* xs, const acc_t* const* ws, int nt, const acc_t* init, acc_t* out,
                         int64_t c0) {
  using V = typename VecOf<acc_t>::type;
  constexpr int L = VecOf<acc_t>::lanes;
  V acc[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) acc[v] = vload<acc_t>(init + c0 + v * L);
  for (int t = 0; t < nt; ++t) {
    const in_t* xp = xs[t] + c0;
    const acc_t* wp = ws[t] + c0;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[v] += vload<acc_t>(xp + v * L) * vload<acc_t>(wp + v * L);
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) vstore(out + c0 + v * L, acc[v]);
}

// One output pixel of a depthwise "gather" over nt taps, all C channels.
template <typename in_t, typename acc_t>
inline void gather_pixel(const in_t* const* xs, const acc_t* const* ws, int nt, const acc_t* __restrict__ init,
                         acc_t* __restrict__ out, int64_t C) {
  constexpr int L = VecOf<acc_t>::lanes;
  int64_t c0 = 0;
  for (; c0 + 4 * L <= C; c0 += 4 * L) gather_block<4>(xs, ws, nt, init, out, c0);
  for (; c0 + L <= C; c0 += L) gather_block<1>(xs, ws, nt, init, out, c0);
  for (int64_t c = c0; c < C; ++c) {
    acc_t a = init[c];
    for (int t = 0; t < nt; ++t) a += static_cast<acc_t>(xs[t][c]) * ws[t][c];
    out[c] = a;
  }
}

// The weights twice: tap-major (wt[tap * C + c], for the scalar channel tail) and blocked by
// channel vector (blocked[(q * KK + tap) * L + lane] = wt[tap * C + q * L + lane] for the C / L
// full vectors q), so that a tile finds each of its taps at a compile-time offset.
template <typename acc_t>
struct TapWeights {
  const acc_t* tap_major;
  std::vector<acc_t> blocked;
  TapWeights(const acc_t* wt, int64_t KK, int64_t C) : tap_major(wt) {
    constexpr int L = VecOf<acc_t>::lanes;
    const int64_t nq = C / L;
    blocked.resize(nq * KK * L);
    for (int64_t q = 0; q < nq; ++q)
      for (int64_t t = 0; t < KK; ++t)
        for (int l = 0; l < L; ++l) blocked[(q * KK + t) * L + l] = wt[t * C + q * L + l];
  }
};

// OWB output pixels x CV channel vectors: OWB * CV independent accumulators (enough to cover the
// FMA latency; one accumulator per vector would serialise every tap on it). Per kernel row the
// K x CV weight vectors are loaded once, then the row's (OWB - 1) * S + K input columns slide
// past: each x vector is loaded once and feeds every pixel whose window holds it. xoff: offset in
// xn of the block's first tap (kh = kw = 0) at the tile's channel (it may lie "outside" the
// image: only the valid taps are read, rows [kh0, kh1) and, with CLIP, columns [kw0, kw1));
// wq: the blocked weights of the tile's first vector; initc / outc: init and output there.
template <int OWB, int CV, int K, int S, bool CLIP, typename scalar_t, typename acc_t>
inline void conv_tile(const scalar_t* xn, int64_t xoff, const acc_t* wq, const acc_t* initc, int64_t C,
                      int64_t xrow, int64_t kh0, int64_t kh1, int kw0, int kw1, acc_t* outc) {
  using V = typename VecOf<acc_t>::type;
  constexpr int L = VecOf<acc_t>::lanes, KK = K * K, T = (OWB - 1) * S + K;
  V acc[OWB][CV];
#pragma GCC unroll 8
  for (int v = 0; v < CV; ++v) {
    const V b = vload<acc_t>(initc + v * L);
#pragma GCC unroll 8
    for (int j = 0; j < OWB; ++j) acc[j][v] = b;
  }
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const scalar_t* xp = xn + (xoff + kh * xrow);
    const acc_t* wr = wq + kh * K * L;
    V w[K][CV];
#pragma GCC unroll 7
    for (int kw = 0; kw < K; ++kw)
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) w[kw][v] = vload<acc_t>(wr + (v * KK + kw) * L);
#pragma GCC unroll 13
    for (int t = 0; t < T; ++t, xp += C) {
      if (CLIP && (t < kw0 || t >= kw1)) continue;
      V xv[CV];
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) xv[v] = vload<acc_t>(xp + v * L);
#pragma GCC unroll 8
      for (int j = 0; j < OWB; ++j) {
        const int kw = t - j * S;
        if (kw < 0 || kw >= K) continue;
#pragma GCC unroll 8
        for (int v = 0; v < CV; ++v) acc[j][v] += xv[v] * w[kw][v];
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < OWB; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < CV; ++v) vstore(outc + j * C + v * L, acc[j][v]);
}

// Calls f(std::integral_constant<int, K>{}, std::integral_constant<int, S>{}) for K in {3, 5, 7},
// S in {1, 2}.
template <typename F>
inline void dispatch_kernel_stride(int64_t K, int64_t S, F&& f) {
  using std::integral_constant;
  switch (K * 10 + S) {
    case 31: return f(integral_constant<int, 3>{}, integral_constant<int, 1>{});
    case 32: return f(integral_constant<int, 3>{}, integral_constant<int, 2>{});
    case 51: return f(integral_constant<int, 5>{}, integral_constant<int, 1>{});
    case 52: return f(integral_constant<int, 5>{}, integral_constant<int, 2>{});
    case 71: return f(integral_constant<int, 7>{}, integral_constant<int, 1>{});
    default: return f(integral_constant<int, 7>{}, integral_constant<int, 2>{});
  }
}

// Which taps of output row oh are inside the image: kernel rows [kh0, kh1); interior pixels
// [lo, hi) have all K columns, the others (border) the columns cols(ow). xrow0: pixel offset in
// the image of tap (0, 0) at ow = 0 (tap (kh, kw) of pixel ow: xrow0 + kh * W + ow * S + kw).
struct RowSpan {
  int64_t kh0, kh1, lo, hi, xrow0, S, left, W, K;
  RowSpan(const ConvGeo& g, int64_t oh)
      : kh0(std::max<int64_t>(0, g.top - oh * g.S)),
        kh1(std::min<int64_t>(g.K, g.H + g.top - oh * g.S)),
        lo(std::min<int64_t>(g.Wo, g.left > 0 ? (g.left + g.S - 1) / g.S : 0)),
        hi(std::max(lo, g.W - g.K + g.left >= 0 ? std::min<int64_t>(g.Wo, (g.W - g.K + g.left) / g.S + 1) : 0)),
        xrow0((oh * g.S - g.top) * g.W - g.left), S(g.S), left(g.left), W(g.W), K(g.K) {}
  std::pair<int, int> cols(int64_t ow) const {
    const int64_t iw0 = ow * S - left;
    return {static_cast<int>(std::clamp<int64_t>(-iw0, 0, K)), static_cast<int>(std::clamp<int64_t>(W - iw0, 0, K))};
  }
};

// buf[ow * C + c] = init[c] + conv(x)[oh, ow, c] for one output row of image xn (H x W x C).
// Channel chunks (4 vectors, then 2, then 1, then the scalar tail) are the outer loop, so a
// chunk's input window and weights stay in L1 while its whole row is computed; within a chunk,
// interior pixels go in blocks of 4 (4 x 2-vector tiles) or alone (one tile of the chunk), border
// pixels (some tap columns outside the image) alone with their valid columns.
template <typename scalar_t, typename acc_t>
inline void conv_row(const scalar_t* xn, const TapWeights<acc_t>& taps, const acc_t* init, const ConvGeo& g,
                     int64_t oh, acc_t* buf) {
  constexpr int L = VecOf<acc_t>::lanes;
  const int64_t C = g.C, xrow = g.W * C;
  const RowSpan r(g, oh);
  const int64_t kh0 = r.kh0, kh1 = r.kh1, lo = r.lo, hi = r.hi, xrow0 = r.xrow0;
  dispatch_kernel_stride(g.K, g.S, [&](auto k, auto s) {
    constexpr int KC = decltype(k)::value, SC = decltype(s)::value;
    // Channels [c, c + CV * L) of the whole row.
    auto chunk = [&](auto cv, int64_t c) {
      constexpr int CV = decltype(cv)::value;
      const acc_t* wq = taps.blocked.data() + c * KC * KC;
      auto at = [&](int64_t ow, int64_t dc) { return (xrow0 + ow * SC) * C + c + dc; };
      auto border = [&](int64_t ow) {
        const auto [kw0, kw1] = r.cols(ow);
        conv_tile<1, CV, KC, SC, true>(xn, at(ow, 0), wq, init + c, C, xrow, kh0, kh1, kw0, kw1, buf + ow * C + c);
      };
      int64_t ow = 0;
      for (; ow < lo; ++ow) border(ow);
      for (; ow + 4 <= hi; ow += 4) {
        if constexpr (CV % 2 == 0) {
          for (int64_t dc = 0; dc < CV * L; dc += 2 * L)
            conv_tile<4, 2, KC, SC, false>(xn, at(ow, dc), wq + dc * KC * KC, init + c + dc, C, xrow, kh0, kh1, 0,
                                           KC, buf + ow * C + c + dc);
        } else {
          conv_tile<4, CV, KC, SC, false>(xn, at(ow, 0), wq, init + c, C, xrow, kh0, kh1, 0, KC, buf + ow * C + c);
        }
      }
      for (; ow < hi; ++ow)
        conv_tile<1, CV, KC, SC, false>(xn, at(ow, 0), wq, init + c, C, xrow, kh0, kh1, 0, KC, buf + ow * C + c);
      for (; ow < g.Wo; ++ow) border(ow);
    };
    int64_t c = 0;
    for (; c + 4 * L <= C; c += 4 * L) chunk(std::integral_constant<int, 4>{}, c);
    for (; c + 2 * L <= C; c += 2 * L) chunk(std::integral_constant<int, 2>{}, c);
    for (; c + L <= C; c += L) chunk(std::integral_constant<int, 1>{}, c);
    const acc_t* wt = taps.tap_major;
    for (; c < C; ++c) {
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const auto [kw0, kw1] = r.cols(ow);
        const int64_t x0 = (xrow0 + ow * SC) * C + c;
        acc_t a = init[c];
        for (int64_t kh = kh0; kh < kh1; ++kh)
          for (int kw = kw0; kw < kw1; ++kw)
            a += static_cast<acc_t>(xn[x0 + kh * xrow + kw * C]) * wt[(kh * KC + kw) * C + c];
        buf[ow * C + c] = a;
      }
    }
  });
}

// Channels [c, c + CV * L) of dweight_row: per kernel row, K x CV accumulators in registers
// over the row's pixels (each dz vector loaded once for its K taps, each x vector once), added to
// dwacc once per kernel row.
template <int K, int S, int CV, typename scalar_t, typename acc_t>
inline void dweight_chunk(const scalar_t* xn, const acc_t* dzr, const RowSpan& r, int64_t Wo, int64_t C,
                          int64_t c, acc_t* dwacc) {
  using V = typename VecOf<acc_t>::type;
  constexpr int L = VecOf<acc_t>::lanes;
  for (int64_t kh = r.kh0; kh < r.kh1; ++kh) {
    V acc[K][CV];
#pragma GCC unroll 7
    for (int kw = 0; kw < K; ++kw)
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) acc[kw][v] = V{};
    auto pixel = [&](int64_t ow, int kw0, int kw1) {
      const scalar_t* xp = xn + ((r.xrow0 + kh * r.W + ow * S) * C + c);
      V dz[CV];
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) dz[v] = vload<acc_t>(dzr + ow * C + c + v * L);
#pragma GCC unroll 7
      for (int kw = 0; kw < K; ++kw) {
        if (kw < kw0 || kw >= kw1) continue;
#pragma GCC unroll 8
        for (int v = 0; v < CV; ++v) acc[kw][v] += dz[v] * vload<acc_t>(xp + kw * C + v * L);
      }
    };
    auto border = [&](int64_t ow) {
      const auto [kw0, kw1] = r.cols(ow);
      pixel(ow, kw0, kw1);
    };
    for (int64_t ow = 0; ow < r.lo; ++ow) border(ow);
    for (int64_t ow = r.lo; ow < r.hi; ++ow) pixel(ow, 0, K);
    for (int64_t ow = r.hi; ow < Wo; ++ow) border(ow);
#pragma GCC unroll 7
    for (int kw = 0; kw < K; ++kw)
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) {
        acc_t* d = dwacc + (kh * K + kw) * C + c + v * L;
        vstore(d, vload<acc_t>(d) + acc[kw][v]);
      }
  }
}

// dwacc[(kh * K + kw) * C + c] += sum_ow dz[ow, c] * x[ih, iw, c] for one output row: channel
// chunks of 4 (k3) or 2 vectors, single vectors, then a scalar tail.
template <typename scalar_t, typename acc_t>
inline void dweight_row(const scalar_t* xn, const acc_t* dzr, const ConvGeo& g, int64_t oh, acc_t* dwacc) {
  constexpr int L = VecOf<acc_t>::lanes;
  const int64_t C = g.C;
  const RowSpan r(g, oh);
  dispatch_kernel_stride(g.K, g.S, [&](auto k, auto s) {
    constexpr int KC = decltype(k)::value, SC = decltype(s)::value, CV = KC == 3 ? 4 : 2;
    int64_t c = 0;
    for (; c + CV * L <= C; c += CV * L) dweight_chunk<KC, SC, CV>(xn, dzr, r, g.Wo, C, c, dwacc);
    for (; c + L <= C; c += L) dweight_chunk<KC, SC, 1>(xn, dzr, r, g.Wo, C, c, dwacc);
    for (; c < C; ++c)
      for (int64_t kh = r.kh0; kh < r.kh1; ++kh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const auto [kw0, kw1] = r.cols(ow);
          const int64_t x0 = (r.xrow0 + kh * g.W + ow * SC) * C + c;
          for (int kw = kw0; kw < kw1; ++kw)
            dwacc[(kh * KC + kw) * C + c] += dzr[ow * C + c] * static_cast<acc_t>(xn[x0 + kw * C]);
        }
  });
}

// Training forward, pass 1: per-block (mean, M2) of the conv output without bias.
template <typename scalar_t>
void DwconvKernels<scalar_t>::dw_stats_pass(const scalar_t* x, const acc_t* wt, const ConvGeo& g, int64_t R,
                                            double* mean_b, double* m2_b, int64_t* counts) {
  const int64_t rows = g.N * g.Ho, nb = (rows + R - 1) / R, C = g.C;
  const TapWeights<acc_t> taps(wt, g.K * g.K, C);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> buf(g.Wo * C), zero(C, acc_t(0)), rm(C), rm2(C);
    for (int64_t b = b0; b < b1; ++b) {
      double* bm = mean_b + b * C;
      double* bm2 = m2_b + b * C;
      std::fill(bm, bm + C, 0.0);
      std::fill(bm2, bm2 + C, 0.0);
      int64_t cnt = 0;
      for (int64_t r = b * R; r < std::min(rows, (b + 1) * R); ++r) {
        const int64_t n = r / g.Ho, oh = r % g.Ho;
        conv_row(x + n * g.H * g.W * C, taps, zero.data(), g, oh, buf.data());
        row_stats(buf.data(), g.Wo, C, rm.data(), rm2.data());
        chan_merge(bm, bm2, cnt, rm.data(), rm2.data(), g.Wo, C);
      }
      counts[b] = cnt;
    }
  });
}

// Forward (eval, and training pass 2): y = act(conv(x; wt) + shift), BN folded into wt / shift.
template <typename scalar_t>
void DwconvKernels<scalar_t>::dw_apply_pass(const scalar_t* x, const acc_t* wt, const acc_t* shift, const ConvGeo& g,
                                            Act act, scalar_t* y) {
  const int64_t rows = g.N * g.Ho, C = g.C, row_len = g.Wo * C;
  const TapWeights<acc_t> taps(wt, g.K * g.K, C);
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> buf(row_len);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / g.Ho, oh = r % g.Ho;
        conv_row(x + n * g.H * g.W * C, taps, shift, g, oh, buf.data());
        act_row<A, acc_t>(buf.data(), row_len, y + r * row_len);
      }
    });
  });
}

// Backward, per output row: zc = conv(x) + cb - mean (init = cb - mean, so mean passed as zero),
// du = act'(BN) * dy with sums. Pass 1 (training) only reduces: red[b][0..2][C] = sum du,
// sum du*zhat, sum zhat. Pass 2 (dz != nullptr or dw != nullptr) also forms
// dz = k1 * (du - k2 - zc * k3), stores it (dz_full, when dx is needed) and reduces dweight.
template <typename scalar_t>
void DwconvKernels<scalar_t>::dw_backward_pass(const scalar_t* x, const scalar_t* dy, const acc_t* wt,
                                               const acc_t* zinit, const acc_t* invstd, const acc_t* gamma,
                                               const acc_t* beta, const acc_t* k1, const acc_t* k2, const acc_t* k3,
                                               const ConvGeo& g, Act act, int64_t R, double* red, bool form_dz,
                                               acc_t* dz_full, double* dw_part) {
  const int64_t rows = g.N * g.Ho, nb = (rows + R - 1) / R, C = g.C, row_len = g.Wo * C, KK = g.K * g.K;
  const TapWeights<acc_t> taps(wt, KK, C);
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> zc(row_len), du(row_len), dzb(form_dz && dz_full == nullptr ? row_len : 0);
      std::vector<acc_t> zero(C, acc_t(0)), s(3 * C), dwacc(dw_part ? KK * C : 0);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(s.begin(), s.end(), acc_t(0));
        std::fill(dwacc.begin(), dwacc.end(), acc_t(0));
        for (int64_t r = b * R; r < std::min(rows, (b + 1) * R); ++r) {
          const int64_t n = r / g.Ho, oh = r % g.Ho;
          const scalar_t* xn = x + n * g.H * g.W * C;
          conv_row(xn, taps, zinit, g, oh, zc.data());
          bn_du_row<A, acc_t>(zc.data(), dy + r * row_len, g.Wo, C, zero.data(), invstd, gamma, beta, du.data(),
                              s.data(), s.data() + C, s.data() + 2 * C);
          if (!form_dz) continue;
          acc_t* dzr = dz_full != nullptr ? dz_full + r * row_len : dzb.data();
          dz_row(du.data(), zc.data(), g.Wo, C, zero.data(), k1, k2, k3, dzr);
          if (dw_part != nullptr) dweight_row(xn, dzr, g, oh, dwacc.data());
        }
        if (red != nullptr) {
          double* rb = red + b * 3 * C;
          for (int64_t j = 0; j < 3 * C; ++j) rb[j] = static_cast<double>(s[j]);
        }
        if (dw_part != nullptr) {
          double* db = dw_part + b * KK * C;
          for (int64_t j = 0; j < KK * C; ++j) db[j] = static_cast<double>(dwacc[j]);
        }
      }
    });
  });
}

// dx[n, ih, iw, c] = sum over taps of dz[n, oh, ow, c] * w[kh, kw, c] (transposed depthwise conv,
// gathered per input pixel so that each thread owns its output rows).
// With stride 1 and 0 <= pads <= K - 1 this is a conv of dz with the flipped weights wflip.
template <typename scalar_t>
void DwconvKernels<scalar_t>::dw_dx_pass(const acc_t* dz, const acc_t* wt, const acc_t* wflip, const ConvGeo& g,
                                         scalar_t* dx) {
  const int64_t rows = g.N * g.H, C = g.C, K = g.K, S = g.S;
  if (S == 1 && g.top >= 0 && g.top <= K - 1 && g.left >= 0 && g.left <= K - 1) {
    const ConvGeo t{g.N, C, g.Ho, g.Wo, K, 1, g.H, g.W, K - 1 - g.top, K - 1 - g.left};
    const TapWeights<acc_t> taps(wflip, K * K, C);
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> buf(g.W * C), zero(C, acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / g.H, ih = r % g.H;
        conv_row(dz + n * g.Ho * g.Wo * C, taps, zero.data(), t, ih, buf.data());
        convert_row<acc_t>(buf.data(), g.W * C, dx + r * g.W * C);
      }
    });
    return;
  }
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> buf(g.W * C), zero(C, acc_t(0));
    const acc_t* xs[kMaxTaps];
    const acc_t* ws[kMaxTaps];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.H, ih = r % g.H;
      const acc_t* dzn = dz + n * g.Ho * g.Wo * C;
      for (int64_t iw = 0; iw < g.W; ++iw) {
        int nt = 0;
        for (int64_t kh = 0; kh < K; ++kh) {
          const int64_t th = ih + g.top - kh;
          if (th < 0 || th % S != 0 || th / S >= g.Ho) continue;
          const int64_t oh = th / S;
          for (int64_t kw = 0; kw < K; ++kw) {
            const int64_t tw = iw + g.left - kw;
            if (tw < 0 || tw % S != 0 || tw / S >= g.Wo) continue;
            xs[nt] = dzn + (oh * g.Wo + tw / S) * C;
            ws[nt] = wt + (kh * K + kw) * C;
            ++nt;
          }
        }
        gather_pixel(xs, ws, nt, zero.data(), buf.data() + iw * C, C);
      }
      convert_row<acc_t>(buf.data(), g.W * C, dx + r * g.W * C);
    }
  });
}

// The NCHW passes (one plane at a time) share this file's ISA copies.
#include "dwconv_bn_act_nchw_kernels.h"
