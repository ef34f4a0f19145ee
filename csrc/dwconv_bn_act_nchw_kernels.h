// Depthwise conv + BN + act kernel passes on NCHW data, one (n, c) plane at a time.
// NO include guard: included at the end of dwconv_bn_act_kernels.h (once per ISA namespace).
//
// Each plane is first converted (acc_t) into a zero-padded thread-local buffer that stays in
// cache, so every tap of every output vector is one contiguous, branch-free load along W: the
// padding is applied there, never to x in memory. With stride 2 each padded row holds its even
// columns and then its odd columns, so tap (kh, kw) of outputs ow .. ow + L - 1 is still one
// contiguous load. Output rows are computed Wv wide (whole vectors); the extra columns are
// never stored and never enter a reduction.
//
// Weights are channel-major: w[c * K * K + kh * K + kw] in the accumulation dtype.
// Reductions go to per-plane partials [N][...][C], combined on the host over n in a fixed order.

struct PlaneGeo {
  int64_t H, W, K, S, top, left, Ho, Wo;
  int64_t Wv;  // Wo rounded up to whole vectors
  int64_t Hp;  // padded rows held (all that any tap reads, and every input row)
  int64_t RS;  // acc_t elements per padded row
  int64_t PO;  // offset of a padded row's odd columns (stride 2); 0 with stride 1
};

template <typename acc_t>
inline PlaneGeo plane_geo(const ConvGeo& g) {
  constexpr int L = VecOf<acc_t>::lanes;
  PlaneGeo p{g.H, g.W, g.K, g.S, g.top, g.left, g.Ho, g.Wo, 0, 0, 0, 0};
  p.Wv = (g.Wo + L - 1) / L * L;
  p.Hp = std::max(g.S * (g.Ho - 1) + g.K, g.H + g.top);
  // Columns any tap reads, and room for the input row copied in whole chunks of S * L
  // (fill_padded / crop_padded: the chunk past W lands in the right padding).
  const int64_t chunk = g.S * L, wc = (g.W + chunk - 1) / chunk * chunk;
  const int64_t cols = std::max(g.S * (p.Wv - 1) + g.K, g.left + wc + 1);
  p.PO = g.S == 1 ? 0 : (cols + 1) / 2;
  p.RS = g.S == 1 ? cols : 2 * p.PO;
  return p;
}

// Offset in a padded plane of tap (kh, kw) of output row 0, column 0 (add oh * S * RS + ow).
template <int S>
inline int64_t tap_offset(const PlaneGeo& p, int kh, int kw) {
  return kh * p.RS + (kw % S) * p.PO + kw / S;
}

// dispatch_kernel_stride (dwconv_bn_act_kernels.h) for the plane's kernel size and stride.
template <typename F>
inline void dispatch_ks(const PlaneGeo& p, F&& f) {
  dispatch_kernel_stride(p.K, p.S, std::forward<F>(f));
}

// A padded row's two column phases as seen from x's columns (stride 2): x[iw] for even iw is at
// first[iw / 2], for odd iw at second[iw / 2].
template <typename T>
inline std::pair<T*, T*> column_phases(T* row, const PlaneGeo& p) {
  const int64_t ph = p.left & 1;
  return {row + ph * p.PO + (p.left >> 1), row + (1 - ph) * p.PO + ((p.left + 1) >> 1)};
}

// Index vector {mul * i + add} (constant-folded: kVL is a compile-time constant).
inline fb_vi lane_index(int mul, int add) {
  fb_vi v;
  for (int i = 0; i < kVL; ++i) v[i] = mul * i + add;
  return v;
}

// n < chunk elements of src, zero-filled to chunk, in tmp (the last, partial chunk of a row goes
// through it so that every row is copied in whole vectors).
template <typename in_t, typename acc_t>
inline const acc_t* zero_padded_tail(const in_t* src, int64_t n, int64_t chunk, acc_t* tmp) {
  for (int64_t i = 0; i < chunk; ++i) tmp[i] = i < n ? static_cast<acc_t>(src[i]) : acc_t(0);
  return tmp;
}

// pad = zero-padded, acc_t copy of one H x W plane of x (see PlaneGeo for the layout).
template <typename scalar_t, typename acc_t>
inline void fill_padded(const scalar_t* __restrict__ xp, const PlaneGeo& p, acc_t* __restrict__ pad) {
  constexpr int L = VecOf<acc_t>::lanes;
  acc_t tmp[2 * L];
  std::memset(pad, 0, sizeof(acc_t) * p.Hp * p.RS);
  const int64_t chunk = p.S * L, full = p.W / chunk * chunk;
  for (int64_t ih = 0; ih < p.H; ++ih) {
    const scalar_t* xr = xp + ih * p.W;
    acc_t* pr = pad + (ih + p.top) * p.RS;
    if (p.S == 1) {
      convert_row<acc_t>(xr, full, pr + p.left);
      if (full < p.W) convert_row<acc_t>(zero_padded_tail(xr + full, p.W - full, chunk, tmp), chunk, pr + p.left + full);
      continue;
    }
    const auto [first, second] = column_phases(pr, p);
    auto split = [&](const auto* src, int64_t iw) {
      if constexpr (std::is_same_v<acc_t, float>) {
        const fb_vf a = vload<float>(src), b = vload<float>(src + kVL);
        vstore(first + iw / 2, __builtin_shuffle(a, b, lane_index(2, 0)));
        vstore(second + iw / 2, __builtin_shuffle(a, b, lane_index(2, 1)));
      } else {
        for (int64_t i = 0; i < L; ++i) {
          first[iw / 2 + i] = static_cast<acc_t>(src[2 * i]);
          second[iw / 2 + i] = static_cast<acc_t>(src[2 * i + 1]);
        }
      }
    };
    for (int64_t iw = 0; iw < full; iw += chunk) split(xr + iw, iw);
    if (full < p.W) split(zero_padded_tail(xr + full, p.W - full, chunk, tmp), full);
  }
}

// Rows oh .. oh + NR - 1, vectors ow0 .. ow0 + NV * L - 1 of init + conv(plane):
// out[(oh + r) * ostride + ow] = init + sum over taps w[kh * K + kw] * padded[(oh + r) * S + kh][ow * S + kw].
// NR * NV independent accumulators: enough FMA chains in flight whatever the row width.
template <int K, int S, int NR, int NV, typename acc_t>
inline void conv_block(const acc_t* __restrict__ pad, const PlaneGeo& p, const acc_t* __restrict__ w, acc_t init,
                       int64_t oh, int64_t ow0, acc_t* out, int64_t ostride) {
  using V = typename VecOf<acc_t>::type;
  constexpr int L = VecOf<acc_t>::lanes;
  V acc[NR][NV];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V{} + init;
  const acc_t* base = pad + oh * S * p.RS + ow0;
#pragma GCC unroll 7
  for (int kh = 0; kh < K; ++kh) {
#pragma GCC unroll 7
    for (int kw = 0; kw < K; ++kw) {
      const acc_t* src = base + tap_offset<S>(p, kh, kw);
      const V wv = V{} + w[kh * K + kw];
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] += vload<acc_t>(src + r * S * p.RS + v * L) * wv;
    }
  }
  // In row order: a row's overhang past Wo may land on the next row's start, stored after it.
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vstore(out + (oh + r) * ostride + ow0 + v * L, acc[r][v]);
}

template <int K, int S, typename acc_t>
inline void conv_plane_ks(const acc_t* pad, const PlaneGeo& p, const acc_t* w, acc_t init, acc_t* out,
                          int64_t ostride) {
  constexpr int L = VecOf<acc_t>::lanes;
  int64_t oh = 0;
  if (p.Wv >= 4 * L) {  // wide rows: 4 vectors of one row at a time
    for (; oh < p.Ho; ++oh) {
      int64_t ow = 0;
      for (; ow + 4 * L <= p.Wv; ow += 4 * L) conv_block<K, S, 1, 4>(pad, p, w, init, oh, ow, out, ostride);
      for (; ow < p.Wv; ow += L) conv_block<K, S, 1, 1>(pad, p, w, init, oh, ow, out, ostride);
    }
    return;
  }
  // Short rows: one vector of 4 rows at a time, the last vector first: its overhang (< L) may land
  // on the next row's first vector, which is stored after it.
  for (; oh + 4 <= p.Ho; oh += 4)
    for (int64_t ow = p.Wv - L; ow >= 0; ow -= L) conv_block<K, S, 4, 1>(pad, p, w, init, oh, ow, out, ostride);
  for (; oh < p.Ho; ++oh)
    for (int64_t ow = p.Wv - L; ow >= 0; ow -= L) conv_block<K, S, 1, 1>(pad, p, w, init, oh, ow, out, ostride);
}

// out[oh * ostride + ow] = init + conv(plane)[oh, ow] for every oh and ow < Wv (ostride >= Wo;
// columns >= Wo are scratch, and with ostride < Wv they overlap the next row, computed after),
// one channel's K x K taps w.
template <typename acc_t>
inline void conv_plane(const acc_t* pad, const PlaneGeo& p, const acc_t* w, acc_t init, acc_t* out,
                       int64_t ostride) {
  dispatch_ks(p, [&](auto k, auto s) {
    conv_plane_ks<decltype(k)::value, decltype(s)::value>(pad, p, w, init, out, ostride);
  });
}

// Scratch of one thread: the padded plane and the conv output plane, compact (Ho * Wo, row oh
// at oh * Wo: each row is computed Wv wide and the overhang is overwritten by the next row), so
// the element-wise work after the conv runs on whole vectors whatever Wo is.
template <typename acc_t>
struct PlaneScratch {
  std::vector<acc_t> pad, z;
  explicit PlaneScratch(const PlaneGeo& p) : pad(p.Hp * p.RS), z(p.Ho * p.Wo + p.Wv) {}
  // z = init + conv(plane q of x).
  template <typename scalar_t>
  void conv(const scalar_t* xq, const PlaneGeo& p, const acc_t* w, acc_t init) {
    fill_padded(xq, p, pad.data());
    conv_plane(pad.data(), p, w, init, z.data(), p.Wo);
  }
};

// Training forward, pass 1: per-plane mean and M2 (around the plane's mean) of the conv output
// without bias, mean_p / m2_p [N][C].
template <typename scalar_t>
void DwconvKernels<scalar_t>::dw_stats_pass_nchw(const scalar_t* x, const acc_t* w, const ConvGeo& g, double* mean_p,
                                                 double* m2_p) {
  const PlaneGeo p = plane_geo<acc_t>(g);
  const int64_t KK = g.K * g.K, cnt = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t q0, int64_t q1) {
    PlaneScratch<acc_t> sc(p);
    const acc_t* z = sc.z.data();
    for (int64_t q = q0; q < q1; ++q) {
      sc.conv(x + q * g.H * g.W, p, w + (q % g.C) * KK, acc_t(0));
      const double mean = plane_sum<acc_t>(z, cnt) / static_cast<double>(cnt);
      const acc_t m = static_cast<acc_t>(mean);
      const double m2 = plane_reduce<acc_t>(cnt, [&](int64_t i, auto t) {
        using T = decltype(t);
        const T d = ld<T>(z + i) - (T{} + m);
        return d * d;
      });
      // M2 around the rounded mean m, moved to the mean itself: sum (z - m)^2 = M2 + cnt (mean - m)^2.
      const double dm = static_cast<double>(m) - mean;
      mean_p[q] = mean;
      m2_p[q] = std::max(0.0, m2 - static_cast<double>(cnt) * dm * dm);
    }
  });
}

// Forward (eval, and training pass 2): y = act(conv(x; wf) + shift), BN folded into wf / shift.
template <typename scalar_t>
void DwconvKernels<scalar_t>::dw_apply_pass_nchw(const scalar_t* x, const acc_t* wf, const acc_t* shift,
                                                 const ConvGeo& g, Act act, scalar_t* y) {
  const PlaneGeo p = plane_geo<acc_t>(g);
  const int64_t KK = g.K * g.K;
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t q0, int64_t q1) {
      PlaneScratch<acc_t> sc(p);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c = q % g.C;
        sc.conv(x + q * g.H * g.W, p, wf + c * KK, shift[c]);
        act_row<A, acc_t>(sc.z.data(), g.Ho * g.Wo, y + q * g.Ho * g.Wo);
      }
    });
  });
}

// One row oh of dz (Wv wide, zero overhang) through every tap: dwacc[t][lane] += dz * x at
// the tap (dweight partials, when dwacc != nullptr) and dpad at the tap += w[t] * dz (the
// transposed conv scattered into the padded gradient plane, when dpad != nullptr).
template <int K, int S, typename acc_t>
inline void dz_row_taps_ks(const acc_t* __restrict__ dzr, const acc_t* __restrict__ pad, const PlaneGeo& p,
                           const acc_t* __restrict__ w, int64_t oh, acc_t* __restrict__ dwacc,
                           acc_t* __restrict__ dpad) {
  using V = typename VecOf<acc_t>::type;
  constexpr int L = VecOf<acc_t>::lanes;
  for (int64_t ow = 0; ow < p.Wv; ow += L) {
    const V d = vload<acc_t>(dzr + ow);
    const int64_t base = oh * S * p.RS + ow;
#pragma GCC unroll 7
    for (int kh = 0; kh < K; ++kh) {
#pragma GCC unroll 7
      for (int kw = 0; kw < K; ++kw) {
        const int64_t at = base + tap_offset<S>(p, kh, kw);
        if (dwacc != nullptr) {
          acc_t* a = dwacc + (kh * K + kw) * L;
          vstore(a, vload<acc_t>(a) + d * vload<acc_t>(pad + at));
        }
        if (dpad != nullptr) vstore(dpad + at, vload<acc_t>(dpad + at) + d * (V{} + w[kh * K + kw]));
      }
    }
  }
}

template <typename acc_t>
inline void dz_row_taps(const acc_t* dzr, const acc_t* pad, const PlaneGeo& p, const acc_t* w, int64_t oh,
                        acc_t* dwacc, acc_t* dpad) {
  dispatch_ks(p, [&](auto k, auto s) {
    dz_row_taps_ks<decltype(k)::value, decltype(s)::value>(dzr, pad, p, w, oh, dwacc, dpad);
  });
}

// dx plane (H x W, x's dtype) = the input window of the padded gradient buffer dpad.
template <typename acc_t, typename scalar_t>
inline void crop_padded(const acc_t* __restrict__ dpad, const PlaneGeo& p, scalar_t* __restrict__ dx) {
  constexpr int L = VecOf<acc_t>::lanes;
  acc_t tmp[2 * L];
  const int64_t chunk = p.S * L, full = p.W / chunk * chunk;
  for (int64_t ih = 0; ih < p.H; ++ih) {
    const acc_t* pr = dpad + (ih + p.top) * p.RS;
    scalar_t* dr = dx + ih * p.W;
    if (p.S == 1) {
      convert_row<acc_t>(pr + p.left, p.W, dr);
      continue;
    }
    const auto [first, second] = column_phases(pr, p);
    // dst[0 .. 2L) = first[iw/2 + i], second[iw/2 + i] interleaved.
    auto merge = [&](auto* dst, int64_t iw) {
      if constexpr (std::is_same_v<acc_t, float>) {
        const fb_vi lo = (lane_index(1, 0) >> 1) + (lane_index(1, 0) & 1) * kVL, hi = lo + kVL / 2;
        const fb_vf a = vload<float>(first + iw / 2), b = vload<float>(second + iw / 2);
        st(dst, __builtin_shuffle(a, b, lo));
        st(dst + kVL, __builtin_shuffle(a, b, hi));
      } else {
        for (int64_t i = 0; i < L; ++i) {
          dst[2 * i] = static_cast<std::remove_reference_t<decltype(*dst)>>(first[iw / 2 + i]);
          dst[2 * i + 1] = static_cast<std::remove_reference_t<decltype(*dst)>>(second[iw / 2 + i]);
        }
      }
    };
    for (int64_t iw = 0; iw < full; iw += chunk) merge(dr + iw, iw);
    if (full < p.W) {
      merge(tmp, full);
      for (int64_t i = 0; i < p.W - full; ++i) dr[full + i] = static_cast<scalar_t>(tmp[i]);
    }
  }
}

// Backward, per plane: zc = conv(x) + zinit (zinit = cb - mean), zhat = zc * invstd,
// du = act'(gamma * zhat + beta) * dy. red (when given): [N][3][C] = sum du, sum du * zhat,
// sum zhat per plane. form_dz: dz = k1 * (du - k2 - zc * k3) (per-plane scratch, never stored
// in memory), then dw_part [N][C][K * K] (when given) and dx through the transposed conv
// (when given), both from dz.
template <typename scalar_t>
void DwconvKernels<scalar_t>::dw_backward_pass_nchw(const scalar_t* x, const scalar_t* dy, const acc_t* w,
                                                    const acc_t* zinit, const acc_t* invstd, const acc_t* gamma,
                                                    const acc_t* beta, const acc_t* k1, const acc_t* k2,
                                                    const acc_t* k3, const ConvGeo& g, Act act, double* red,
                                                    bool form_dz, double* dw_part, scalar_t* dx) {
  const PlaneGeo p = plane_geo<acc_t>(g);
  constexpr int L = VecOf<acc_t>::lanes;
  const int64_t KK = g.K * g.K, C = g.C, cnt = g.Ho * g.Wo;
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, g.N * C, 1, [&](int64_t q0, int64_t q1) {
      PlaneScratch<acc_t> sc(p);
      // du (compact, then dz in place); dz again in padded-row layout (Wv wide, zero overhang)
      // for the per-tap dweight dots and the dx scatter.
      std::vector<acc_t> du(cnt), dzrows(form_dz ? p.Ho * p.Wv : 0), dpad(dx != nullptr ? p.Hp * p.RS : 0);
      std::vector<acc_t> dwacc(dw_part != nullptr ? KK * L : 0);  // per tap, one vector of lane partials
      const acc_t* zc = sc.z.data();
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t n = q / C, c = q % C;
        const acc_t* wc = w + c * KK;
        const acc_t is = invstd[c], ga = gamma[c] * is, be = beta[c];
        sc.conv(x + q * g.H * g.W, p, wc, zinit[c]);
        const scalar_t* dyq = dy + q * cnt;
        vloop<acc_t>(cnt, [&](int64_t i, auto t) {
          using T = decltype(t);
          st(du.data() + i, act_bwd<A>(ld<T>(zc + i) * (T{} + ga) + (T{} + be), ld<T>(dyq + i)));
        });
        if (red != nullptr) {
          double* rq = red + n * 3 * C + c;
          rq[0] = plane_sum<acc_t>(du.data(), cnt);
          rq[C] = plane_reduce<acc_t>(cnt, [&](int64_t i, auto t) {
                    using T = decltype(t);
                    return ld<T>(du.data() + i) * ld<T>(zc + i);
                  }) * static_cast<double>(is);
          rq[2 * C] = plane_sum<acc_t>(zc, cnt) * static_cast<double>(is);
        }
        if (!form_dz) continue;
        const acc_t a1 = k1[c], a2 = k2[c], a3 = k3[c];
        vloop<acc_t>(cnt, [&](int64_t i, auto t) {
          using T = decltype(t);
          st(du.data() + i, (T{} + a1) * (ld<T>(du.data() + i) - (T{} + a2) - ld<T>(zc + i) * (T{} + a3)));
        });
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          acc_t* r = dzrows.data() + oh * p.Wv;
          std::copy(du.data() + oh * g.Wo, du.data() + (oh + 1) * g.Wo, r);
          std::fill(r + g.Wo, r + p.Wv, acc_t(0));  // the overhang must not contribute
        }
        acc_t* dwa = dw_part != nullptr ? dwacc.data() : nullptr;
        acc_t* dp = dx != nullptr ? dpad.data() : nullptr;
        if (dwa != nullptr) std::fill(dwacc.begin(), dwacc.end(), acc_t(0));
        if (dp != nullptr) std::fill(dpad.begin(), dpad.end(), acc_t(0));
        for (int64_t oh = 0; oh < g.Ho; ++oh)
          dz_row_taps(dzrows.data() + oh * p.Wv, sc.pad.data(), p, wc, oh, dwa, dp);
        if (dwa != nullptr) {
          for (int64_t t = 0; t < KK; ++t) {
            double s = 0;
            for (int l = 0; l < L; ++l) s += static_cast<double>(dwacc[t * L + l]);
            dw_part[q * KK + t] = s;
          }
        }
        if (dp != nullptr) {
          crop_padded(dpad.data(), p, dx + q * g.H * g.W);
        }
      }
    });
  });
}
