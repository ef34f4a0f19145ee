// Channel pooling and per-(n, c) scaling kernels for gate_scale / squeeze_excite / eca.
// GateScaleKernels (fb_cpu_kernels.h). NO include guard: included once per ISA namespace, after
// fb_cpu_math.h, by gate_scale_cpu_<isa>.cpp (fb_cpu_isa_copy.h).
//
// Layouts: channels-last (vectorised over C) and NCHW planes (vectorised over H * W). Reductions
// are summed in acc_t over short runs, then in double, in a fixed order (deterministic).

// part[(n * nbh + j) * C + c] = sum of x[n, h, w, c] over rows h in block j (R rows per block).
template <typename scalar_t>
void GateScaleKernels<scalar_t>::pool_cl(const scalar_t* x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t R,
                                         double* part) {
  const int64_t nbh = (H + R - 1) / R;
  at::parallel_for(0, N * nbh, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> acc(C);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / nbh, h0 = (b % nbh) * R, h1 = std::min(H, h0 + R);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* xb = x + (n * H + h0) * W * C;
      for (int64_t p = 0; p < (h1 - h0) * W; ++p) {
        const scalar_t* xp = xb + p * C;
        acc_t* a = acc.data();
        vloop<acc_t>(C, [&](int64_t c, auto z) {
          using T = decltype(z);
          st(a + c, ld<T>(a + c) + ld<T>(xp + c));
        });
      }
      for (int64_t c = 0; c < C; ++c) part[b * C + c] = static_cast<double>(acc[c]);
    }
  });
}

// out[p] = sum of plane p.
template <typename scalar_t>
void GateScaleKernels<scalar_t>::pool_plane(const scalar_t* x, int64_t planes, int64_t HW, double* out) {
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      out[p] = plane_sum<acc_t>(x + p * HW, HW);
    }
  });
}

// y[n, p, c] = x[n, p, c] * g[n, c] + b[n, c]  (channels-last, HW pixels per image).
template <typename scalar_t>
void GateScaleKernels<scalar_t>::scale_cl(const scalar_t* x, int64_t N, int64_t HW, int64_t C, const acc_t* g,
                                          const acc_t* b, scalar_t* y) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, N * HW, grain, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / HW;
      const acc_t* __restrict__ gn = g + n * C;
      const acc_t* __restrict__ bn = b + n * C;
      const scalar_t* xp = x + q * C;
      scalar_t* yp = y + q * C;
      vloop<acc_t>(C, [&](int64_t c, auto z) {
        using T = decltype(z);
        st(yp + c, ld<T>(xp + c) * ld<T>(gn + c) + ld<T>(bn + c));
      });
    }
  });
}

template <typename scalar_t>
void GateScaleKernels<scalar_t>::scale_plane(const scalar_t* x, int64_t planes, int64_t HW, const acc_t* g,
                                             const acc_t* b, scalar_t* y) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1));
  at::parallel_for(0, planes, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const acc_t gp = g[p], bp = b[p];
      const scalar_t* xp = x + p * HW;
      scalar_t* yp = y + p * HW;
      vloop<acc_t>(HW, [&](int64_t i, auto z) {
        using T = decltype(z);
        st(yp + i, ld<T>(xp + i) * gp + bp);
      });
    }
  });
}

// One pass over dy and x: dx = dy * g[n, c] (when dx != nullptr) and per-block partial sums of
// dy * x (blocks as in pool_cl).
template <typename scalar_t>
void GateScaleKernels<scalar_t>::scale_backward_cl(const scalar_t* dy, const scalar_t* x, int64_t N, int64_t H,
                                                   int64_t W, int64_t C, int64_t R, const acc_t* g, scalar_t* dx,
                                                   double* part) {
  const int64_t nbh = (H + R - 1) / R;
  at::parallel_for(0, N * nbh, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> acc(C);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / nbh, h0 = (b % nbh) * R, h1 = std::min(H, h0 + R);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t off = (n * H + h0) * W * C;
      const acc_t* __restrict__ gn = g + n * C;
      for (int64_t p = 0; p < (h1 - h0) * W; ++p) {
        const scalar_t* xp = x + off + p * C;
        const scalar_t* gp = dy + off + p * C;
        acc_t* a = acc.data();
        if (dx != nullptr) {
          scalar_t* op = dx + off + p * C;
          vloop<acc_t>(C, [&](int64_t c, auto z) {
            using T = decltype(z);
            const T d = ld<T>(gp + c);
            st(a + c, ld<T>(a + c) + d * ld<T>(xp + c));
            st(op + c, d * ld<T>(gn + c));
          });
        } else {
          fma_row(a, gp, xp, C);
        }
      }
      for (int64_t c = 0; c < C; ++c) part[b * C + c] = static_cast<double>(acc[c]);
    }
  });
}

template <typename scalar_t>
void GateScaleKernels<scalar_t>::scale_backward_plane(const scalar_t* dy, const scalar_t* x, int64_t planes, int64_t HW,
                                                      const acc_t* g, scalar_t* dx, double* out) {
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const acc_t gp = g[p];
      const scalar_t* __restrict__ xp = x + p * HW;
      const scalar_t* __restrict__ dp = dy + p * HW;
      double s = 0;
      for (int64_t i0 = 0; i0 < HW; i0 += kPlaneChunk) {
        const int64_t i1 = std::min(HW, i0 + kPlaneChunk);
        fb_vf va{};
        acc_t a = 0;
        scalar_t* op = dx != nullptr ? dx + p * HW : nullptr;
        vloop<acc_t>(i1 - i0, [&](int64_t j, auto z) {
          using T = decltype(z);
          const int64_t i = i0 + j;
          const T d = ld<T>(dp + i);
          if constexpr (IsVec<T>::value) va += d * ld<T>(xp + i); else a += d * ld<T>(xp + i);
          if (op != nullptr) st(op + i, d * gp);
        });
        if constexpr (std::is_same_v<acc_t, float>) a += hsum(va);
        s += a;
      }
      out[p] = s;
    }
  });
}
