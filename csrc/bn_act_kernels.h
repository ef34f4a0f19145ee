// BatchNorm + act kernel passes: BnActKernels (fb_cpu_kernels.h). NO include guard: included once
// per ISA namespace, after fb_cpu_math.h, by bn_act_cpu_<isa>.cpp (fb_cpu_isa_copy.h).
//
// Two layouts, both native (no layout conversion):
//  - channels-last: rows = N * H rows of W pixels x C channels, vectorised over C;
//  - NCHW: planes = N * C planes of H * W elements, vectorised over the plane.
// Reductions go to per-block (channels-last) or per-plane (NCHW) partials in double that the
// host combines in a fixed order: deterministic whatever the thread count.

// ---------------------------------------------------------------- channels-last
template <typename scalar_t>
void BnActKernels<scalar_t>::bn_stats_cl(const scalar_t* x, int64_t rows, int64_t W, int64_t C, int64_t R,
                                         double* mean_b, double* m2_b, int64_t* counts) {
  const int64_t nb = (rows + R - 1) / R;
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> rm(C), rm2(C);
    for (int64_t b = b0; b < b1; ++b) {
      double* bm = mean_b + b * C;
      double* bm2 = m2_b + b * C;
      std::fill(bm, bm + C, 0.0);
      std::fill(bm2, bm2 + C, 0.0);
      int64_t cnt = 0;
      for (int64_t r = b * R; r < std::min(rows, (b + 1) * R); ++r) {
        row_stats(x + r * W * C, W, C, rm.data(), rm2.data());
        chan_merge(bm, bm2, cnt, rm.data(), rm2.data(), W, C);
      }
      counts[b] = cnt;
    }
  });
}

template <typename scalar_t>
void BnActKernels<scalar_t>::bn_apply_cl(const scalar_t* x, int64_t rows, int64_t W, int64_t C, const acc_t* scale,
                                         const acc_t* shift, Act act, scalar_t* y) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(W * C, 1));
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        affine_act_row<A, acc_t>(x + r * W * C, W, C, scale, shift, y + r * W * C);
    });
  });
}

// red[b][0..2][C] = sum du, sum du * zhat, sum zhat per block (when red != nullptr);
// dx = k1 * (du - k2 - (x - mean) * k3) when dx != nullptr.
template <typename scalar_t>
void BnActKernels<scalar_t>::bn_backward_cl(const scalar_t* x, const scalar_t* dy, int64_t rows, int64_t W, int64_t C,
                                            int64_t R, const acc_t* mean, const acc_t* invstd, const acc_t* gamma,
                                            const acc_t* beta, const acc_t* k1, const acc_t* k2, const acc_t* k3,
                                            Act act, double* red, scalar_t* dx) {
  const int64_t nb = (rows + R - 1) / R, len = W * C;
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> du(len), s(3 * C);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(s.begin(), s.end(), acc_t(0));
        for (int64_t r = b * R; r < std::min(rows, (b + 1) * R); ++r) {
          bn_du_row<A, acc_t>(x + r * len, dy + r * len, W, C, mean, invstd, gamma, beta, du.data(), s.data(),
                              s.data() + C, s.data() + 2 * C);
          if (dx != nullptr) dz_row(du.data(), x + r * len, W, C, mean, k1, k2, k3, dx + r * len);
        }
        if (red != nullptr) {
          double* rb = red + b * 3 * C;
          for (int64_t j = 0; j < 3 * C; ++j) rb[j] = static_cast<double>(s[j]);
        }
      }
    });
  });
}

// ---------------------------------------------------------------- NCHW planes
// mean_p / m2_p: [N][C] (plane order), each plane's mean and M2 around it.
template <typename scalar_t>
void BnActKernels<scalar_t>::bn_stats_plane(const scalar_t* x, int64_t planes, int64_t HW, double* mean_p,
                                            double* m2_p) {
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* xp = x + p * HW;
      const double s = plane_sum<acc_t>(xp, HW);
      const double m = s / static_cast<double>(HW);
      const acc_t ma = static_cast<acc_t>(m);
      double q = 0, e = 0;
      for (int64_t i0 = 0; i0 < HW; i0 += kPlaneChunk) {
        const int64_t i1 = std::min(HW, i0 + kPlaneChunk);
        fb_vf va{}, vea{};
        acc_t a = 0, ea = 0;
        vloop<acc_t>(i1 - i0, [&](int64_t j, auto z) {
          using T = decltype(z);
          const T d = ld<T>(xp + i0 + j) - ma;
          if constexpr (IsVec<T>::value) va += d * d, vea += d; else a += d * d, ea += d;
        });
        if constexpr (std::is_same_v<acc_t, float>) a += hsum(va), ea += hsum(vea);
        q += a;
        e += ea;
      }
      // M2 around the exact mean m (ma is m rounded to acc_t): sum (x - m)^2 = q - e^2 / HW.
      mean_p[p] = m;
      m2_p[p] = q - e * e / static_cast<double>(HW);
    }
  });
}

template <typename scalar_t>
void BnActKernels<scalar_t>::bn_apply_plane(const scalar_t* x, int64_t N, int64_t C, int64_t HW, const acc_t* scale,
                                            const acc_t* shift, Act act, scalar_t* y) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1));
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, N * C, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        affine_act_plane<A, acc_t>(x + p * HW, HW, scale[c], shift[c], y + p * HW);
      }
    });
  });
}

// red[p][0..2] = sum du, sum du * zhat, sum zhat per plane (when red != nullptr);
// dx = k1 * (du - k2 - (x - mean) * k3) when dx != nullptr.
template <typename scalar_t>
void BnActKernels<scalar_t>::bn_backward_plane(const scalar_t* x, const scalar_t* dy, int64_t N, int64_t C, int64_t HW,
                                               const acc_t* mean, const acc_t* invstd, const acc_t* gamma,
                                               const acc_t* beta, const acc_t* k1, const acc_t* k2, const acc_t* k3,
                                               Act act, double* red, scalar_t* dx) {
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, N * C, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        const acc_t m = mean[c], is = invstd[c], ga = gamma[c], be = beta[c];
        const scalar_t* __restrict__ xp = x + p * HW;
        const scalar_t* __restrict__ gp = dy + p * HW;
        if (red != nullptr) {
          double s0 = 0, s1 = 0, s2 = 0;
          for (int64_t i0 = 0; i0 < HW; i0 += kPlaneChunk) {
            const int64_t i1 = std::min(HW, i0 + kPlaneChunk);
            fb_vf v0{}, v1{}, v2{};
            acc_t a0 = 0, a1 = 0, a2 = 0;
            vloop<acc_t>(i1 - i0, [&](int64_t j, auto z) {
              using T = decltype(z);
              const int64_t i = i0 + j;
              const T zh = (ld<T>(xp + i) - m) * is;
              const T d = act_bwd<A>(zh * ga + be, ld<T>(gp + i));
              if constexpr (IsVec<T>::value) {
                v0 += d, v1 += d * zh, v2 += zh;
              } else {
                a0 += d, a1 += d * zh, a2 += zh;
              }
            });
            if constexpr (std::is_same_v<acc_t, float>) a0 += hsum(v0), a1 += hsum(v1), a2 += hsum(v2);
            s0 += a0, s1 += a1, s2 += a2;
          }
          red[p * 3 + 0] = s0, red[p * 3 + 1] = s1, red[p * 3 + 2] = s2;
        }
        if (dx != nullptr) {
          const acc_t a = k1[c], b = k2[c], q = k3[c];
          scalar_t* __restrict__ op = dx + p * HW;
          vloop<acc_t>(HW, [&](int64_t i, auto z) {
            using T = decltype(z);
            const T zc = ld<T>(xp + i) - m;
            const T d = act_bwd<A>(zc * is * ga + be, ld<T>(gp + i));
            st(op + i, a * (d - b - zc * q));
          });
        }
      }
    });
  });
}
