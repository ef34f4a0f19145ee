// Element-wise math and row helpers for the CPU kernels.
//
// NO include guard on purpose: each ISA copy (csrc/<family>_cpu_<isa>.cpp, fb_cpu_isa_copy.h)
// includes this inside its namespace (fastblocks::cpu::isa_default / isa_avx2 / isa_avx512) so that
// every loop is compiled once per target and inlined into that target's kernels. Standard / ATen
// headers come from fb_cpu_base.h, included before (at global scope).
//
// Conventions: acc_t is float (double for double inputs). Hot loops go through vloop(): explicit
// GCC vector types for float accumulation (branch-free: selects instead of ifs, so that silu's exp
// and the activation kinks vectorise), scalar code for the tail and for double.

// FB_VBYTES-byte vectors (GCC vector extensions; the including file sets FB_VBYTES to 32 or 64
// before each inclusion): zmm / ymm registers in the AVX-512 / AVX2 copies, xmm otherwise.
#ifndef FB_VBYTES
#define FB_VBYTES 32
#endif
constexpr int kVL = FB_VBYTES / 4;  // float lanes
typedef float fb_vf __attribute__((vector_size(FB_VBYTES)));
typedef double fb_vd __attribute__((vector_size(FB_VBYTES)));
typedef uint16_t fb_vu16 __attribute__((vector_size(FB_VBYTES / 2)));
typedef uint32_t fb_vu32 __attribute__((vector_size(FB_VBYTES)));
typedef int32_t fb_vi __attribute__((vector_size(FB_VBYTES)));

template <typename acc_t>
struct VecOf;
template <>
struct VecOf<float> {
  using type = fb_vf;
  static constexpr int lanes = kVL;
};
template <>
struct VecOf<double> {
  using type = fb_vd;
  static constexpr int lanes = kVL / 2;
};

// Half <-> float for GCC vectors, the arithmetic of c10::detail::fp16_ieee_to_fp32_value /
// fp16_ieee_from_fp32_value lane by lane (bit-identical).
inline fb_vf fb_half_to_float(fb_vu16 h) {
  const fb_vu32 w = __builtin_convertvector(h, fb_vu32) << 16;
  const fb_vu32 sign = w & 0x80000000u;
  const fb_vu32 two_w = w + w;
  const fb_vu32 norm_bits = (two_w >> 4) + (0xE0u << 23);
  fb_vf norm;
  std::memcpy(&norm, &norm_bits, sizeof(norm));
  norm *= 0x1.0p-112f;
  const fb_vu32 denorm_bits = (two_w >> 17) | (126u << 23);
  fb_vf denorm;
  std::memcpy(&denorm, &denorm_bits, sizeof(denorm));
  denorm -= 0.5f;
  fb_vu32 nb, db;
  std::memcpy(&nb, &norm, sizeof(nb));
  std::memcpy(&db, &denorm, sizeof(db));
  const fb_vu32 r = sign | (two_w < (1u << 27) ? db : nb);
  fb_vf out;
  std::memcpy(&out, &r, sizeof(out));
  return out;
}

inline fb_vu16 fb_float_to_half(fb_vf f) {
  fb_vu32 w;
  std::memcpy(&w, &f, sizeof(w));
  const fb_vu32 abs_bits = w & 0x7FFFFFFFu;
  fb_vf base;
  std::memcpy(&base, &abs_bits, sizeof(base));
  base = (base * 0x1.0p+112f) * 0x1.0p-110f;
  const fb_vu32 shl1_w = w + w;
  const fb_vu32 sign = w & 0x80000000u;
  fb_vu32 bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? (fb_vu32{} + 0x71000000u) : bias;
  const fb_vu32 bias_bits = (bias >> 1) + 0x07800000u;
  fb_vf bias_f;
  std::memcpy(&bias_f, &bias_bits, sizeof(bias_f));
  base = bias_f + base;
  fb_vu32 bits;
  std::memcpy(&bits, &base, sizeof(bits));
  const fb_vu32 nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const fb_vu32 r = (sign >> 16) | (shl1_w > 0xFF000000u ? (fb_vu32{} + 0x7E00u) : nonsign);
  return __builtin_convertvector(r, fb_vu16);
}

// lanes consecutive elements of p as an acc_t vector (unaligned load, converted).
template <typename acc_t, typename in_t>
inline typename VecOf<acc_t>::type vload(const in_t* p) {
  using V = typename VecOf<acc_t>::type;
  V v;
  if constexpr (std::is_same_v<in_t, acc_t>) {
    std::memcpy(&v, p, sizeof(V));
  } else if constexpr (std::is_same_v<in_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    fb_vu16 h;
    std::memcpy(&h, p, sizeof(h));
    const fb_vu32 w = __builtin_convertvector(h, fb_vu32) << 16;
    std::memcpy(&v, &w, sizeof(V));
  } else if constexpr (std::is_same_v<in_t, c10::Half> && std::is_same_v<acc_t, float>) {
    fb_vu16 h;
    std::memcpy(&h, p, sizeof(h));
    v = fb_half_to_float(h);
  } else {
    for (int i = 0; i < VecOf<acc_t>::lanes; ++i) v[i] = static_cast<acc_t>(p[i]);
  }
  return v;
}

template <typename acc_t>
inline void vstore(acc_t* p, typename VecOf<acc_t>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
struct IsVec : std::false_type {};
template <>
struct IsVec<fb_vf> : std::true_type {};

// T (an acc_t scalar or an fb_vf of kVL floats) from p[0 .. lanes), converted.
template <typename T, typename in_t>
inline T ld(const in_t* p) {
  if constexpr (IsVec<T>::value) {
    return vload<float>(p);
  } else {
    return static_cast<T>(*p);
  }
}

template <typename T, typename out_t>
inline void st(out_t* p, T v) {
  if constexpr (IsVec<T>::value) {
    if constexpr (std::is_same_v<out_t, float>) {
      std::memcpy(p, &v, sizeof(v));
    } else if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
      // Round to nearest even, NaN -> 0x7FC0: what c10::BFloat16(float) does, vectorised.
      fb_vu32 b;
      std::memcpy(&b, &v, sizeof(b));
      fb_vu32 r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
      r = (v != v) ? (fb_vu32{} + 0x7FC0u) : r;
      const fb_vu16 h = __builtin_convertvector(r, fb_vu16);
      std::memcpy(p, &h, sizeof(h));
    } else if constexpr (std::is_same_v<out_t, c10::Half>) {
      const fb_vu16 h = fb_float_to_half(v);
      std::memcpy(p, &h, sizeof(h));
    } else {
      for (int k = 0; k < kVL; ++k) p[k] = static_cast<out_t>(v[k]);
    }
  } else {
    *p = static_cast<out_t>(v);
  }
}

// Broadcast a scalar (use float literals: exact in float and double). The AVX copies use set1,
// not T{} + s: adding zero is not an identity for -0.0, so the compiler has to emit the add, and
// the broadcast then cannot fold into an FMA's memory operand.
template <typename T>
inline T bc(float s) {
  if constexpr (IsVec<T>::value) {
#if FB_ISA_LEVEL == 2
    return (T)_mm512_set1_ps(s);
#elif FB_ISA_LEVEL == 1
    return (T)_mm256_set1_ps(s);
#else
    return T{} + s;
#endif
  } else {
    return static_cast<T>(s);
  }
}
template <typename T>
inline T vmin(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
inline T vmax(T a, T b) {
  return a > b ? a : b;
}
inline float hsum(fb_vf v) {
  float s = 0;
  for (int k = 0; k < kVL; ++k) s += v[k];
  return s;
}

// Calls body(i, T{}) with T = fb_vf on blocks of kVL (float accumulation), then T = acc_t on the
// tail (and on everything for double). The vector path is branch-free (selects, no ifs).
template <typename acc_t, typename F>
inline void vloop(int64_t n, F&& body) {
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    for (; i + kVL <= n; i += kVL) body(i, fb_vf{});
  }
  for (; i < n; ++i) body(i, acc_t{});
}

// e^(x - n ln 2) for |x - n ln 2| <= ln 2 / 2: Cephes' two-part ln 2 and degree-6 polynomial
// (T: float or fb_vf; exp(x) = 2^n times this).
template <typename T>
inline T fb_exp_reduced(T x, T n) {
  T r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const T r2 = r * r;
  T p = bc<T>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r2 + r + 1.0f;
}

// exp for float: Cephes-style range reduction + degree-6 polynomial (about 2 ulp), inputs clamped
// to the normal range. The vector version is the same arithmetic, branch-free.
inline fb_vf fb_exp(fb_vf x) {
  x = vmin(vmax(x, bc<fb_vf>(-87.0f)), bc<fb_vf>(88.0f));
  const fb_vf t = x * 1.44269504088896341f + 0.5f;
  fb_vf fx = __builtin_convertvector(__builtin_convertvector(t, fb_vi), fb_vf);
  fx = fx > t ? fx - 1.0f : fx;  // floor
  const fb_vf p = fb_exp_reduced(x, fx);
  const fb_vi bits = (__builtin_convertvector(fx, fb_vi) + 127) << 23;
  fb_vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline float fb_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float fx = std::floor(x * 1.44269504088896341f + 0.5f);
  const float p = fb_exp_reduced(x, fx);
  const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double fb_exp(double x) { return std::exp(x); }

template <typename T>
inline T fb_sigmoid(T u) {
  return bc<T>(1.0f) / (bc<T>(1.0f) + fb_exp(-u));
}

// A constant in T's precision (float in float lanes, double in double), as ATen rounds its constants.
template <typename T>
inline T cst(double c) {
  return T{} + static_cast<std::conditional_t<IsVec<T>::value, float, T>>(c);
}

// Standard normal CDF Phi(u) = erfc(-u / sqrt 2) / 2. Float (scalar or fb_vf): Numerical Recipes'
// erfc (Chebyshev fit around exp, fractional error < 1.2e-7 for every argument), so the negative
// tail keeps its relative precision, which 1 + erf(u / sqrt 2) loses; double: std::erfc.
template <typename T>
inline T fb_normal_cdf(T u) {
  const T z = vmax(u, -u) * bc<T>(0.70710678118654752f);
  const T t = bc<T>(1.0f) / (bc<T>(1.0f) + bc<T>(0.5f) * z);
  T p = bc<T>(0.17087277f);
  p = p * t + bc<T>(-0.82215223f);
  p = p * t + bc<T>(1.48851587f);
  p = p * t + bc<T>(-1.13520398f);
  p = p * t + bc<T>(0.27886807f);
  p = p * t + bc<T>(-0.18628806f);
  p = p * t + bc<T>(0.09678418f);
  p = p * t + bc<T>(0.37409196f);
  p = p * t + bc<T>(1.00002368f);
  p = p * t + bc<T>(-1.26551223f);
  const T half_erfc = bc<T>(0.5f) * t * fb_exp(p - z * z);  // erfc(z) / 2 = Phi(-|u|)
  return u < bc<T>(0.0f) ? half_erfc : bc<T>(1.0f) - half_erfc;
}
inline double fb_normal_cdf(double u) { return 0.5 * std::erfc(-u * 0.70710678118654752440); }

// Standard normal density phi(u).
template <typename T>
inline T fb_normal_pdf(T u) {
  return fb_exp(bc<T>(-0.5f) * u * u) * bc<T>(0.398942280401432678f);
}
inline double fb_normal_pdf(double u) { return std::exp(-0.5 * u * u) * 0.398942280401432678; }

// gelu_tanh(u) = u (1 + tanh(z)) / 2 = u * sigmoid(2 z), z = sqrt(2 / pi) (u + 0.044715 u^3): the
// sigmoid form has no cancellation in 1 + tanh for negative u.
template <typename T>
inline T gelu_tanh_two_z(T u) {
  return cst<T>(kGeluTanhTwoBeta) * (u + cst<T>(kGeluTanhKappa) * u * u * u);
}

// T: acc_t scalar or fb_vf.
template <Act A, typename T>
inline T act_fwd(T u) {
  const T zero = bc<T>(0.0f);
  if constexpr (A == Act::Silu) {
    return u * fb_sigmoid(u);
  } else if constexpr (A == Act::Relu) {
    return u > zero ? u : zero;
  } else if constexpr (A == Act::Relu6) {
    return vmin(vmax(u, zero), bc<T>(6.0f));
  } else if constexpr (A == Act::Hardswish) {
    return u * vmin(vmax(u + bc<T>(3.0f), zero), bc<T>(6.0f)) / bc<T>(6.0f);
  } else if constexpr (A == Act::LeakyRelu) {
    return u > zero ? u : u * cst<T>(kLeakyReluSlope);
  } else if constexpr (A == Act::Gelu) {
    return u * fb_normal_cdf(u);
  } else if constexpr (A == Act::GeluTanh) {
    return u * fb_sigmoid(gelu_tanh_two_z(u));
  } else {
    return u;
  }
}

// d act(u) / du * g, from the pre-activation u (matches fastblocks._act / ATen's formulas).
template <Act A, typename T>
inline T act_bwd(T u, T g) {
  const T zero = bc<T>(0.0f);
  if constexpr (A == Act::Silu) {
    const T s = fb_sigmoid(u);
    return g * s * (bc<T>(1.0f) + u * (bc<T>(1.0f) - s));
  } else if constexpr (A == Act::Relu) {
    return u > zero ? g : zero;
  } else if constexpr (A == Act::Relu6) {
    return ((u > zero) & (u < bc<T>(6.0f))) ? g : zero;
  } else if constexpr (A == Act::Hardswish) {
    const T mid = g * (u / bc<T>(3.0f) + bc<T>(0.5f));
    return u < bc<T>(-3.0f) ? zero : (u <= bc<T>(3.0f) ? mid : g);
  } else if constexpr (A == Act::LeakyRelu) {
    return u > zero ? g : g * cst<T>(kLeakyReluSlope);
  } else if constexpr (A == Act::Gelu) {
    return g * (fb_normal_cdf(u) + u * fb_normal_pdf(u));
  } else if constexpr (A == Act::GeluTanh) {
    // d/du u s(2z) = s + u s (1 - s) 2 dz/du, 2 dz/du = 2 sqrt(2 / pi) (1 + 3 * 0.044715 u^2)
    const T s = fb_sigmoid(gelu_tanh_two_z(u));
    const T dz2 = cst<T>(kGeluTanhTwoBeta) * (bc<T>(1.0f) + cst<T>(3 * kGeluTanhKappa) * u * u);
    return g * (s + u * s * (bc<T>(1.0f) - s) * dz2);
  } else {
    return g;
  }
}

// Calls f(std::integral_constant<Act, A>{}) for the runtime activation `act`.
template <typename F>
inline void dispatch_act(Act act, F&& f) {
  switch (act) {
    case Act::Silu: f(std::integral_constant<Act, Act::Silu>{}); break;
    case Act::Relu: f(std::integral_constant<Act, Act::Relu>{}); break;
    case Act::Relu6: f(std::integral_constant<Act, Act::Relu6>{}); break;
    case Act::Hardswish: f(std::integral_constant<Act, Act::Hardswish>{}); break;
    case Act::LeakyRelu: f(std::integral_constant<Act, Act::LeakyRelu>{}); break;
    case Act::Gelu: f(std::integral_constant<Act, Act::Gelu>{}); break;
    case Act::GeluTanh: f(std::integral_constant<Act, Act::GeluTanh>{}); break;
    default: f(std::integral_constant<Act, Act::Identity>{}); break;
  }
}

// y[i] = act(x[i]), any input / output types, arithmetic in acc_t.
template <Act A, typename acc_t, typename in_t, typename out_t>
inline void act_row(const in_t* __restrict__ x, int64_t n, out_t* __restrict__ y) {
  vloop<acc_t>(n, [&](int64_t i, auto z) {
    using T = decltype(z);
    st(y + i, act_fwd<A>(ld<T>(x + i)));
  });
}

// dx[i] = act'(x[i]) * dy[i].
template <Act A, typename acc_t, typename in_t, typename out_t>
inline void act_grad_row(const in_t* __restrict__ x, const in_t* __restrict__ dy, int64_t n, out_t* __restrict__ dx) {
  vloop<acc_t>(n, [&](int64_t i, auto z) {
    using T = decltype(z);
    st(dx + i, act_bwd<A>(ld<T>(x + i), ld<T>(dy + i)));
  });
}

// Channels-last row of npix pixels x C channels: y = act(x * scale[c] + shift[c]).
template <Act A, typename acc_t, typename in_t, typename out_t>
inline void affine_act_row(const in_t* __restrict__ x, int64_t npix, int64_t C, const acc_t* __restrict__ scale,
                           const acc_t* __restrict__ shift, out_t* __restrict__ y) {
  for (int64_t p = 0; p < npix; ++p) {
    const in_t* xp = x + p * C;
    out_t* yp = y + p * C;
    vloop<acc_t>(C, [&](int64_t c, auto z) {
      using T = decltype(z);
      st(yp + c, act_fwd<A>(ld<T>(xp + c) * ld<T>(scale + c) + ld<T>(shift + c)));
    });
  }
}

// Plane of n elements with one channel's scalars: y = act(x * sc + sh).
template <Act A, typename acc_t, typename in_t, typename out_t>
inline void affine_act_plane(const in_t* __restrict__ x, int64_t n, acc_t sc, acc_t sh, out_t* __restrict__ y) {
  vloop<acc_t>(n, [&](int64_t i, auto z) {
    using T = decltype(z);
    st(y + i, act_fwd<A>(ld<T>(x + i) * (T{} + sc) + (T{} + sh)));
  });
}

// Row statistics of a channels-last row (npix x C): per-channel mean and M2 around that mean.
template <typename acc_t, typename in_t>
inline void row_stats(const in_t* __restrict__ x, int64_t npix, int64_t C, acc_t* __restrict__ mean,
                      acc_t* __restrict__ m2) {
  for (int64_t c = 0; c < C; ++c) mean[c] = acc_t(0), m2[c] = acc_t(0);
  for (int64_t p = 0; p < npix; ++p) {
    const in_t* xp = x + p * C;
    vloop<acc_t>(C, [&](int64_t c, auto z) {
      using T = decltype(z);
      st(mean + c, ld<T>(mean + c) + ld<T>(xp + c));
    });
  }
  const acc_t inv = acc_t(1) / static_cast<acc_t>(npix);
  for (int64_t c = 0; c < C; ++c) mean[c] *= inv;
  for (int64_t p = 0; p < npix; ++p) {
    const in_t* xp = x + p * C;
    vloop<acc_t>(C, [&](int64_t c, auto z) {
      using T = decltype(z);
      const T d = ld<T>(xp + c) - ld<T>(mean + c);
      st(m2 + c, ld<T>(m2 + c) + d * d);
    });
  }
}

// Merge a row's (mean, M2, count) into a block's running (mean, M2, count), in double.
template <typename acc_t>
inline void chan_merge(double* __restrict__ bmean, double* __restrict__ bm2, int64_t& bcount,
                       const acc_t* __restrict__ rmean, const acc_t* __restrict__ rm2, int64_t rcount, int64_t C) {
  const double na = static_cast<double>(bcount), nb = static_cast<double>(rcount);
  const double wb = nb / (na + nb), wab = na * nb / (na + nb);
  for (int64_t c = 0; c < C; ++c) {
    const double d = static_cast<double>(rmean[c]) - bmean[c];
    bmean[c] += d * wb;
    bm2[c] += static_cast<double>(rm2[c]) + d * d * wab;
  }
  bcount += rcount;
}

// Backward through act(BN(z)) for a channels-last row:
//   zhat = (z - mean) * invstd, u = gamma * zhat + beta, du = act'(u) * dy;
// writes du, and accumulates sum(du), sum(du * zhat), sum(zhat) per channel.
template <Act A, typename acc_t, typename zc_t, typename dy_t>
inline void bn_du_row(const zc_t* __restrict__ zc, const dy_t* __restrict__ dy, int64_t npix, int64_t C,
                      const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                      const acc_t* __restrict__ gamma, const acc_t* __restrict__ beta, acc_t* __restrict__ du,
                      acc_t* __restrict__ s_du, acc_t* __restrict__ s_duz, acc_t* __restrict__ s_z) {
  for (int64_t p = 0; p < npix; ++p) {
    const zc_t* zp = zc + p * C;
    const dy_t* gp = dy + p * C;
    acc_t* dp = du + p * C;
    vloop<acc_t>(C, [&](int64_t c, auto z) {
      using T = decltype(z);
      const T zh = (ld<T>(zp + c) - ld<T>(mean + c)) * ld<T>(invstd + c);
      const T d = act_bwd<A>(zh * ld<T>(gamma + c) + ld<T>(beta + c), ld<T>(gp + c));
      st(dp + c, d);
      st(s_du + c, ld<T>(s_du + c) + d);
      st(s_duz + c, ld<T>(s_duz + c) + d * zh);
      st(s_z + c, ld<T>(s_z + c) + zh);
    });
  }
}

// dz = k1[c] * (du - k2[c] - (z - mean[c]) * k3[c]) for a channels-last row.
template <typename acc_t, typename z_t, typename out_t>
inline void dz_row(const acc_t* __restrict__ du, const z_t* __restrict__ z, int64_t npix, int64_t C,
                   const acc_t* __restrict__ mean, const acc_t* __restrict__ k1, const acc_t* __restrict__ k2,
                   const acc_t* __restrict__ k3, out_t* __restrict__ dz) {
  for (int64_t p = 0; p < npix; ++p) {
    const acc_t* dp = du + p * C;
    const z_t* zp = z + p * C;
    out_t* op = dz + p * C;
    vloop<acc_t>(C, [&](int64_t c, auto zz) {
      using T = decltype(zz);
      st(op + c, ld<T>(k1 + c) * (ld<T>(dp + c) - ld<T>(k2 + c) - (ld<T>(zp + c) - ld<T>(mean + c)) * ld<T>(k3 + c)));
    });
  }
}

// Sum over i < n of f(i, T) (T = fb_vf blocks, then acc_t on the tail): acc_t over chunks of
// kPlaneChunk elements, the chunks added in double in order (the chunks bound the float rounding
// error; the fixed order keeps it deterministic).
constexpr int64_t kPlaneChunk = 1024;

template <typename acc_t, typename F>
inline double plane_reduce(int64_t n, F&& f) {
  double s = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kPlaneChunk) {
    fb_vf va{};
    acc_t a = 0;
    vloop<acc_t>(std::min(n - i0, kPlaneChunk), [&](int64_t j, auto z) {
      using T = decltype(z);
      if constexpr (IsVec<T>::value) va += f(i0 + j, z); else a += f(i0 + j, z);
    });
    if constexpr (std::is_same_v<acc_t, float>) a += hsum(va);
    s += a;
  }
  return s;
}

// Sum of a contiguous plane x[0 .. n).
template <typename acc_t, typename in_t>
inline double plane_sum(const in_t* __restrict__ x, int64_t n) {
  return plane_reduce<acc_t>(n, [&](int64_t i, auto t) { return ld<decltype(t)>(x + i); });
}

// a[i] += b[i] * x[i].
template <typename acc_t, typename b_t, typename in_t>
inline void fma_row(acc_t* __restrict__ a, const b_t* __restrict__ b, const in_t* __restrict__ x, int64_t n) {
  vloop<acc_t>(n, [&](int64_t i, auto z) {
    using T = decltype(z);
    st(a + i, ld<T>(a + i) + ld<T>(b + i) * ld<T>(x + i));
  });
}

// y[i] = x[i] converted.
template <typename acc_t, typename in_t, typename out_t>
inline void convert_row(const in_t* __restrict__ x, int64_t n, out_t* __restrict__ y) {
  vloop<acc_t>(n, [&](int64_t i, auto z) {
    using T = decltype(z);
    st(y + i, ld<T>(x + i));
  });
}
