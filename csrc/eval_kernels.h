// Inference (eval-mode) kernel loops on float32: EvalKernels (fb_cpu_kernels.h). NO include guard:
// included once per ISA namespace, after fb_cpu_math.h, by eval_cpu_<isa>.cpp (fb_cpu_isa_copy.h).
//
// The weights here are already folded (BatchNorm scale in the weights, the shift in `bias`), so
// each kernel is one pass: a conv epilogue (bias + residual + act in place over a GEMM's output)
// and a channels-last depthwise conv with bias + act and, optionally, the per-channel sums of its
// output that a squeeze-and-excitation pool needs. Activations use eval_act below: silu's
// sigmoid takes a hardware reciprocal estimate refined by one Newton step instead of a division
// (relative error ~1e-7, the division's throughput was the kernel's bound).

// 1 / d for positive finite d: rcp14 (AVX-512) / rcp (AVX2) + one Newton step; a division elsewhere.
inline fb_vf fb_recip(fb_vf d) {
#if FB_ISA_LEVEL == 2
  const fb_vf r = (fb_vf)_mm512_rcp14_ps((__m512)d);
  return r * (bc<fb_vf>(2.0f) - d * r);
#elif FB_ISA_LEVEL == 1
  const fb_vf r = (fb_vf)_mm256_rcp_ps((__m256)d);
  return r * (bc<fb_vf>(2.0f) - d * r);
#else
  return bc<fb_vf>(1.0f) / d;
#endif
}
inline float fb_recip(float d) { return 1.0f / d; }

// exp as fb_exp (same range reduction and polynomial) for the sigmoids of the eval kernels, its
// argument capped at 80: 1 / (1 + e^80) is still a normal float, and a denormal reciprocal (from
// e^88) would cost a microcode assist in every operation it enters (~40x slower layers on inputs
// whose pre-activations reach -88; silu's value there is 0 to within 1e-33 either way). The
// AVX-512 copy rounds with vrndscaleps and applies 2^n with vscalefps instead of emulating floor
// and building the exponent bits.
constexpr float kEvalExpCap = 80.0f;
inline fb_vf fb_exp_eval(fb_vf x) {
#if FB_ISA_LEVEL == 2
  x = vmin(vmax(x, bc<fb_vf>(-87.0f)), bc<fb_vf>(kEvalExpCap));
  const fb_vf n = (fb_vf)_mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT);
  return (fb_vf)_mm512_scalef_ps((__m512)fb_exp_reduced(x, n), (__m512)n);
#else
  return fb_exp(vmin(x, bc<fb_vf>(kEvalExpCap)));
#endif
}
inline float fb_exp_eval(float x) { return fb_exp(std::min(x, kEvalExpCap)); }

// Lanes [0, n) of p, the others zero (0 < n <= kVL): the channel tail of a row without a scalar
// loop (a scalar tail of 8 channels made a 72-channel depthwise layer 5x slower than 64 or 80).
inline fb_vf vload_part(const float* p, int n) {
#if FB_ISA_LEVEL == 2
  return (fb_vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#elif FB_ISA_LEVEL == 1
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return (fb_vf)_mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
#else
  fb_vf v = bc<fb_vf>(0.0f);
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}
// Stores lanes [0, n) of v to p.
inline void vstore_part(float* p, fb_vf v, int n) {
#if FB_ISA_LEVEL == 2
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#elif FB_ISA_LEVEL == 1
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane), (__m256)v);
#else
  for (int i = 0; i < n; ++i) p[i] = v[i];
#endif
}

// The eval activation of a float vector or scalar (same functions as act_fwd).
template <Act A, typename T>
inline T eval_act(T u) {
  if constexpr (A == Act::Silu) {
    return u * fb_recip(bc<T>(1.0f) + fb_exp_eval(-u));
  } else if constexpr (A == Act::Hardswish) {
    return u * vmin(vmax(u + bc<T>(3.0f), bc<T>(0.0f)), bc<T>(6.0f)) * bc<T>(1.0f / 6.0f);
  } else {
    return act_fwd<A>(u);
  }
}

constexpr int64_t kEpilogueGrain = 16384;  // elements per parallel task at least

// y[r, c] = act(y[r, c] + bias[c] (+ res[r, c])) over rows x C (channels-last rows).
template <typename scalar_t>
void EvalKernels<scalar_t>::epilogue_cl(float* y, int64_t rows, int64_t C, const float* bias, const float* res,
                                        Act act) {
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    const int64_t grain = std::max<int64_t>(1, kEpilogueGrain / std::max<int64_t>(C, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* yr = y + r * C;
        const float* rr = res ? res + r * C : nullptr;
        int64_t c = 0;
        for (; c + kVL <= C; c += kVL) {
          fb_vf v = vload<float>(yr + c) + vload<float>(bias + c);
          if (rr) v += vload<float>(rr + c);
          vstore(yr + c, eval_act<A>(v));
        }
        if (c < C) {
          const int n = static_cast<int>(C - c);
          fb_vf v = vload_part(yr + c, n) + vload_part(bias + c, n);
          if (rr) v += vload_part(rr + c, n);
          vstore_part(yr + c, eval_act<A>(v), n);
        }
      }
    });
  });
}

// y[p, i] = act(y[p, i] + bias[p % C] (+ res[p, i])) over planes x HW (NCHW planes).
template <typename scalar_t>
void EvalKernels<scalar_t>::epilogue_plane(float* y, int64_t planes, int64_t HW, int64_t C, const float* bias,
                                           const float* res, Act act) {
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    const int64_t grain = std::max<int64_t>(1, kEpilogueGrain / std::max<int64_t>(HW, 1));
    at::parallel_for(0, planes, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        float* yp = y + p * HW;
        const float* rp = res ? res + p * HW : nullptr;
        const float b = bias[p % C];
        const fb_vf bv = bc<fb_vf>(b);
        int64_t i = 0;
        for (; i + kVL <= HW; i += kVL) {
          fb_vf v = vload<float>(yp + i) + bv;
          if (rp) v += vload<float>(rp + i);
          vstore(yp + i, eval_act<A>(v));
        }
        if (i < HW) {
          const int n = static_cast<int>(HW - i);
          fb_vf v = vload_part(yp + i, n) + bv;
          if (rp) v += vload_part(rp + i, n);
          vstore_part(yp + i, eval_act<A>(v), n);
        }
      }
    });
  });
}

// A vector of p: all lanes, or (PART) the first `lanes` of them; and the matching store.
template <bool PART>
inline fb_vf vload_lanes(const float* p, int lanes) {
  if constexpr (PART) return vload_part(p, lanes);
  return vload<float>(p);
}
template <bool PART>
inline void vstore_lanes(float* p, fb_vf v, int lanes) {
  if constexpr (PART) {
    vstore_part(p, v, lanes);
  } else {
    vstore(p, v);
  }
}

// acc[p][v] = bias vector v for every pixel p of a register tile (PART: the last vector has only
// `lanes` lanes, the others zero).
template <int PT, int NV, bool PART>
inline void tile_from_bias(fb_vf (&acc)[PT][NV], const float* bias, int lanes) {
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const fb_vf b = PART && v == NV - 1 ? vload_part(bias + v * kVL, lanes) : vload<float>(bias + v * kVL);
#pragma GCC unroll 16
    for (int p = 0; p < PT; ++p) acc[p][v] = b;
  }
}

// act(u) stored to p (all lanes, or the first `lanes`), returned.
template <Act A, bool PART>
inline fb_vf store_act(float* p, fb_vf u, int lanes) {
  const fb_vf r = eval_act<A>(u);
  vstore_lanes<PART>(p, r, lanes);
  return r;
}

// [lo, hi): the output columns whose k taps all fall inside a row of W (stride S, `left` padding).
inline std::pair<int64_t, int64_t> interior_columns(int64_t W, int64_t K, int64_t S, int64_t left, int64_t Wo) {
  const int64_t lo = std::min<int64_t>(Wo, (left + S - 1) / S);
  const int64_t hi = W - K + left >= 0 ? (W - K + left) / S + 1 : 0;
  return {lo, std::max<int64_t>(lo, std::min<int64_t>(hi, Wo))};
}

// act(acc) of a register tile's PT pixels to y (pixels `stride` floats apart), each pixel's
// values added to pool (optional: a depthwise row's channel sums).
template <Act A, int PT, int NV, bool PART>
inline void store_tile(fb_vf (&acc)[PT][NV], float* y, int64_t stride, int lanes, fb_vf* pool) {
#pragma GCC unroll 16
  for (int p = 0; p < PT; ++p) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      const fb_vf r = store_act<A, PART>(y + p * stride + v * kVL, acc[p][v], lanes);
      if (pool) pool[v] += r;  // lanes past `lanes` hold act(0) = 0 for every eval activation
    }
  }
}

// The input rows one output row of a channels-last depthwise conv reads: rows[kh] (kh in the
// row's [kh0, kh1)) points at pixel 0 of input row oh * S - top + kh, at the first channel of the
// vectors being computed; consecutive pixels are `pix` floats apart (C for the layer's input, the
// row width of a buffer for the fused expand + depthwise kernel).
struct DwRows {
  const float* rows[7];
  int64_t pix;
  int64_t kh0, kh1;  // the kernel rows whose input rows exist (the others are padding)
};

// The input rows of output row `oh`: rows[kh] = row(ih) for the input rows ih = oh * S - top + kh
// that exist, pixels `pix` floats apart.
template <typename Row>
inline DwRows dw_input_rows(const ConvGeo& g, int64_t oh, int64_t pix, Row&& row) {
  DwRows in;
  in.pix = pix;
  in.kh0 = std::max<int64_t>(0, g.top - oh * g.S);
  in.kh1 = std::min<int64_t>(g.K, g.H + g.top - oh * g.S);
  for (int64_t kh = in.kh0; kh < in.kh1; ++kh) in.rows[kh] = row(oh * g.S - g.top + kh);
  return in;
}

// One tile of a channels-last depthwise conv: PT consecutive output pixels from `ow0` of one
// output row, NV channel vectors (PART: one vector of `lanes` channels, the row's tail),
// accumulated over the kernel rows [kh0, kh1); in.rows offset by `dc` channels. w, bias and yrow
// (the output row's pixel 0) start at the tile's first channel. BORDER: some tap of some pixel
// falls outside the row (checked per tap), else every tap is inside.
template <Act A, int PT, int NV, bool BORDER, bool PART>
inline void dw_eval_tile(const DwRows& in, int64_t dc, const float* w, const float* bias, const ConvGeo& g,
                         int64_t ow0, int lanes, int64_t kh0, int64_t kh1, float* yrow, fb_vf* pool) {
  static_assert(!PART || NV == 1, "a partial vector is a tile of one vector");
  constexpr int L = kVL;
  const int64_t C = g.C;
  fb_vf acc[PT][NV];
  tile_from_bias<PT, NV, PART>(acc, bias, lanes);
  const int64_t iw0 = ow0 * g.S - g.left;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const float* xrow = in.rows[kh] + dc;
    const float* wrow = w + kh * g.K * C;
    for (int64_t kw = 0; kw < g.K; ++kw) {
      fb_vf wv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) wv[v] = vload_lanes<PART>(wrow + kw * C + v * L, lanes);
#pragma GCC unroll 8
      for (int p = 0; p < PT; ++p) {
        const int64_t iw = iw0 + p * g.S + kw;
        if (BORDER && (iw < 0 || iw >= g.W)) continue;
        const float* xp = xrow + iw * in.pix;
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[p][v] += vload_lanes<PART>(xp + v * L, lanes) * wv[v];
      }
    }
  }
  store_tile<A, PT, NV, PART>(acc, yrow + ow0 * C, C, lanes, pool);
}

// An interior tile (every tap inside the row) for a kernel of K x K taps, stride S known at
// compile time: PT output pixels from `ow0`, NV channel vectors. Per kernel row the K weight
// vectors stay in registers and each input column is loaded once for all the taps that read it
// (column j = S * p + kw): for one vector and a 3x3 stride-1 kernel, 21 loads per 48 FMAs in a
// 16-pixel tile against 60 in dw_eval_tile's 4-pixel tiles. The same sums in the same order as
// dw_eval_tile.
template <Act A, int PT, int NV, int K, int S, bool PART>
inline void dw_slide_tile(const DwRows& in, int64_t dc, const float* w, const float* bias, const ConvGeo& g,
                          int64_t ow0, int lanes, int64_t kh0, int64_t kh1, float* yrow, fb_vf* pool) {
  constexpr int L = kVL;
  constexpr int J = S * (PT - 1) + K;  // input columns of one kernel row
  const int64_t C = g.C;
  fb_vf acc[PT][NV];
  tile_from_bias<PT, NV, PART>(acc, bias, lanes);
  const int64_t iw0 = ow0 * S - g.left;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const float* xrow = in.rows[kh] + dc + iw0 * in.pix;
    fb_vf wv[K][NV];
#pragma GCC unroll 8
    for (int kw = 0; kw < K; ++kw) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[kw][v] = vload_lanes<PART>(w + (kh * K + kw) * C + v * L, lanes);
    }
#pragma GCC unroll 64
    for (int j = 0; j < J; ++j) {
      fb_vf xv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) xv[v] = vload_lanes<PART>(xrow + j * in.pix + v * L, lanes);
#pragma GCC unroll 8
      for (int kw = 0; kw < K; ++kw) {
        const int q = j - kw;
        if (q < 0 || q % S != 0 || q / S >= PT) continue;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[q / S][v] += xv[v] * wv[kw][v];
      }
    }
  }
  store_tile<A, PT, NV, PART>(acc, yrow + ow0 * C, C, lanes, pool);
}

// One output row, channels [dc, dc + NV vectors) of the tile's (PART: [dc, dc + lanes)) with w,
// bias, yrow and pool (optional: the row's per-channel sums, added to) at those channels:
// interior pixels in tiles (KS > 0: sliding tiles of a KS x KS, stride-SS kernel, as many pixels
// as the registers hold beside the KS * NV weights, then 4; else tiles of 4), the rest and the
// pixels whose taps cross the left / right edge one at a time.
template <Act A, int NV, bool PART, int KS = 0, int SS = 0>
inline void dw_eval_row_block(const DwRows& in, int64_t dc, const float* w, const float* bias, const ConvGeo& g,
                              int lanes, int64_t kh0, int64_t kh1, float* yrow, float* pool) {
  fb_vf acc[NV];
  fb_vf* pv = pool ? acc : nullptr;
  for (int v = 0; v < NV; ++v) acc[v] = bc<fb_vf>(0.0f);
  const auto [lo, hi] = interior_columns(g.W, g.K, g.S, g.left, g.Wo);
  int64_t ow = 0;
  for (; ow < lo; ++ow) dw_eval_tile<A, 1, NV, true, PART>(in, dc, w, bias, g, ow, lanes, kh0, kh1, yrow, pv);
  if constexpr (KS > 0) {
    constexpr int kRegs = FB_ISA_LEVEL == 2 ? 32 : 16;
    constexpr int PT = std::max(1, std::min(16, (kRegs - (KS + 2) * NV - 2) / NV));
    for (; ow + PT <= hi; ow += PT)
      dw_slide_tile<A, PT, NV, KS, SS, PART>(in, dc, w, bias, g, ow, lanes, kh0, kh1, yrow, pv);
    if constexpr (PT > 4) {
      for (; ow + 4 <= hi; ow += 4)
        dw_slide_tile<A, 4, NV, KS, SS, PART>(in, dc, w, bias, g, ow, lanes, kh0, kh1, yrow, pv);
    }
  } else {
    for (; ow + 4 <= hi; ow += 4)
      dw_eval_tile<A, 4, NV, false, PART>(in, dc, w, bias, g, ow, lanes, kh0, kh1, yrow, pv);
  }
  for (; ow < hi; ++ow) dw_eval_tile<A, 1, NV, false, PART>(in, dc, w, bias, g, ow, lanes, kh0, kh1, yrow, pv);
  for (; ow < g.Wo; ++ow) dw_eval_tile<A, 1, NV, true, PART>(in, dc, w, bias, g, ow, lanes, kh0, kh1, yrow, pv);
  if (!pool) return;
  for (int v = 0; v < NV; ++v) vstore_lanes<PART>(pool + v * kVL, vload_lanes<PART>(pool + v * kVL, lanes) + acc[v], lanes);
}

// `width` channels of one output row with sliding tiles: pairs of vectors, a last whole vector, a
// partial one (width <= 2 vectors in dw_eval_chunk: at most one pass of each).
template <Act A, int K, int S>
inline void dw_slide_chunk(const DwRows& in, int64_t dc, const float* w, const float* bias, const ConvGeo& g,
                           int64_t width, int64_t kh0, int64_t kh1, float* yrow, float* pool) {
  int64_t c = 0;
  for (; c + 2 * kVL <= width; c += 2 * kVL)
    dw_eval_row_block<A, 2, false, K, S>(in, dc + c, w + c, bias + c, g, kVL, kh0, kh1, yrow + c, pool ? pool + c : nullptr);
  if (c + kVL <= width) {
    dw_eval_row_block<A, 1, false, K, S>(in, dc + c, w + c, bias + c, g, kVL, kh0, kh1, yrow + c, pool ? pool + c : nullptr);
    c += kVL;
  }
  if (c < width)
    dw_eval_row_block<A, 1, true, K, S>(in, dc + c, w + c, bias + c, g, static_cast<int>(width - c), kh0, kh1, yrow + c,
                                   pool ? pool + c : nullptr);
}

// `width` channels (at most one chunk of 4 vectors) of one output row: up to 2 vectors (layers of
// 16 / 32 channels, a chunk's remainder) with a 3x3 or 5x5 kernel of stride 1 or 2 in sliding
// tiles (a 16-channel 112x112 block 1.18x); a whole chunk in one pass of 4-pixel tiles (as two
// sliding passes of 2 vectors it measured 0.87-1.08x, slower on 14x14 maps); else vector by
// vector and a partial last one. w, bias, yrow and pool start at the chunk's first channel, which
// is channel dc of `in`.
template <Act A>
inline void dw_eval_chunk(const DwRows& in, int64_t dc, const float* w, const float* bias, const ConvGeo& g,
                          int64_t width, int64_t kh0, int64_t kh1, float* yrow, float* pool) {
  switch (width > 2 * kVL ? 0 : g.K * 10 + g.S) {
    case 31: dw_slide_chunk<A, 3, 1>(in, dc, w, bias, g, width, kh0, kh1, yrow, pool); return;
    case 32: dw_slide_chunk<A, 3, 2>(in, dc, w, bias, g, width, kh0, kh1, yrow, pool); return;
    case 51: dw_slide_chunk<A, 5, 1>(in, dc, w, bias, g, width, kh0, kh1, yrow, pool); return;
    case 52: dw_slide_chunk<A, 5, 2>(in, dc, w, bias, g, width, kh0, kh1, yrow, pool); return;
    default: break;
  }
  if (width == 4 * kVL) {
    dw_eval_row_block<A, 4, false>(in, dc, w, bias, g, kVL, kh0, kh1, yrow, pool);
    return;
  }
  int64_t c = 0;
  for (; c + kVL <= width; c += kVL)
    dw_eval_row_block<A, 1, false>(in, dc + c, w + c, bias + c, g, kVL, kh0, kh1, yrow + c, pool ? pool + c : nullptr);
  if (c < width)
    dw_eval_row_block<A, 1, true>(in, dc + c, w + c, bias + c, g, static_cast<int>(width - c), kh0, kh1, yrow + c,
                                  pool ? pool + c : nullptr);
}

// Channels-last depthwise conv on folded weights: y = act(conv(x, w) + bias), w tap-major
// [K * K][C], for the output rows [row0, row1) of the N * Ho rows. Work items are (image, output row, chunk of 4 channel vectors), so batch-1 layers
// with few rows still spread over the threads. pool_rows (optional, [N * Ho][C], zeroed by the
// caller): each output row's per-channel sums of y, combined by the host in row order
// (deterministic for any thread count).
template <typename scalar_t>
void EvalKernels<scalar_t>::dw_eval_cl(const float* x, const float* w, const float* bias, const ConvGeo& g, Act act,
                                       float* y, float* pool_rows, int64_t row0, int64_t row1) {
  constexpr int64_t kChunk = 4 * kVL;
  const int64_t chunks = (g.C + kChunk - 1) / kChunk;
  const int64_t items = (row1 - row0) * chunks;
  // small layers stay on one thread: a parallel region costs microseconds to open
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, g.Wo * g.K * g.K * kChunk));
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t c0 = item % chunks * kChunk;
        const int64_t row = row0 + item / chunks;  // n * Ho + oh
        const int64_t n = row / g.Ho, oh = row % g.Ho;
        const DwRows in = dw_input_rows(g, oh, g.C, [&](int64_t ih) { return x + ((n * g.H + ih) * g.W) * g.C + c0; });
        dw_eval_chunk<A>(in, 0, w + c0, bias + c0, g, std::min(kChunk, g.C - c0), in.kh0, in.kh1,
                         y + row * g.Wo * g.C + c0, pool_rows ? pool_rows + row * g.C + c0 : nullptr);
      }
    });
  });
}


// acc[p][v] += x[p * stride] * wv[v] over a register tile: one broadcast per pixel, NV FMAs each.
template <int PT, int NV>
inline void tile_outer_fma(fb_vf (&acc)[PT][NV], const float* x, int64_t stride, const fb_vf (&wv)[NV]) {
#pragma GCC unroll 16
  for (int p = 0; p < PT; ++p) {
    const fb_vf xv = bc<fb_vf>(x[p * stride]);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[p][v] += xv * wv[v];
  }
}

// One output pixel `ow` of the direct conv whose taps may cross the row's left / right edge (those
// taps are skipped): NV vectors of output channels from c0 (PART: one vector of `lanes` channels),
// over kernel rows [kh0, kh1).
template <Act A, int NV, bool PART>
inline void direct_border_pixel(const float* x, const float* w, const float* bias, const DirectGeo& g, int64_t n,
                                int64_t oh, int64_t ow, int64_t c0, int lanes, int64_t kh0, int64_t kh1, float* y) {
  constexpr int L = kVL;
  fb_vf acc[1][NV];
  tile_from_bias<1, NV, PART>(acc, bias + c0, lanes);
  const int64_t iw0 = ow * g.S - g.left;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const float* xrow = x + n * g.sn + (oh * g.S - g.top + kh) * g.sh;
    for (int64_t kw = 0; kw < g.K; ++kw) {
      const int64_t iw = iw0 + kw;
      if (iw < 0 || iw >= g.W) continue;
      const float* wk = w + ((kh * g.K + kw) * g.Cin) * g.Cout + c0;
      for (int64_t ci = 0; ci < g.Cin; ++ci, wk += g.Cout) {
        fb_vf wv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) wv[v] = vload_lanes<PART>(wk + v * L, lanes);
        tile_outer_fma(acc, xrow + iw * g.sw + ci * g.sc, 0, wv);
      }
    }
  }
  store_tile<A, 1, NV, PART>(acc, y + ((n * g.Ho + oh) * g.Wo + ow) * g.Cout + c0, g.Cout, lanes, nullptr);
}

// An interior tile of the direct conv (every tap inside the row): PT consecutive output pixels of
// row `oh` from `ow0`, NV vectors of output channels from c0 (PART: one vector of `lanes`
// channels), each input value broadcast once and multiplied by NV weight vectors; the taps of
// kernel rows [kh0, kh1) in one flat loop over their input offsets `off` ((kh, kw, ci) order,
// the weights' order too) instead of three nested loops, whose overheads outweighed the FMAs with
// 3 input channels. The sums of direct_border_pixel, in its order.
template <Act A, int PT, int NV, bool PART>
inline void direct_tile_flat(const float* x, const float* w, const float* bias, const DirectGeo& g,
                             const int64_t* off, int64_t n, int64_t oh, int64_t ow0, int64_t c0, int lanes,
                             int64_t kh0, int64_t kh1, float* y) {
  constexpr int L = kVL;
  fb_vf acc[PT][NV];
  tile_from_bias<PT, NV, PART>(acc, bias + c0, lanes);
  const float* base = x + n * g.sn + (oh * g.S - g.top) * g.sh + (ow0 * g.S - g.left) * g.sw;
  const int64_t step = g.S * g.sw;
  const int64_t per_row = g.K * g.Cin;
  const float* wk = w + kh0 * per_row * g.Cout + c0;
  for (int64_t t = kh0 * per_row; t < kh1 * per_row; ++t, wk += g.Cout) {
    fb_vf wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = vload_lanes<PART>(wk + v * L, lanes);
    tile_outer_fma(acc, base + off[t], step, wv);
  }
  store_tile<A, PT, NV, PART>(acc, y + ((n * g.Ho + oh) * g.Wo + ow0) * g.Cout + c0, g.Cout, lanes, nullptr);
}

// Output row `oh` of image n, channels [c0, c0 + NV vectors) (PART: [c0, c0 + lanes)); `off`:
// the taps' input offsets for direct_tile_flat.
template <Act A, int NV, bool PART>
inline void direct_row_block(const float* x, const float* w, const float* bias, const DirectGeo& g,
                             const int64_t* off, int64_t n, int64_t oh, int64_t c0, int lanes, int64_t kh0,
                             int64_t kh1, float* y) {
  // PT * NV accumulators + NV weights + a broadcast in the vector registers (32 with AVX-512)
  constexpr int kRegs = FB_ISA_LEVEL == 2 ? 32 : 16;
  constexpr int PT = std::min(12, std::max(1, (kRegs - NV - 2) / NV));
  const auto [lo, hi] = interior_columns(g.W, g.K, g.S, g.left, g.Wo);
  int64_t ow = 0;
  for (; ow < lo; ++ow) direct_border_pixel<A, NV, PART>(x, w, bias, g, n, oh, ow, c0, lanes, kh0, kh1, y);
  for (; ow + PT <= hi; ow += PT)
    direct_tile_flat<A, PT, NV, PART>(x, w, bias, g, off, n, oh, ow, c0, lanes, kh0, kh1, y);
  if constexpr (PT > 4) {
    for (; ow + 4 <= hi; ow += 4)
      direct_tile_flat<A, 4, NV, PART>(x, w, bias, g, off, n, oh, ow, c0, lanes, kh0, kh1, y);
  }
  for (; ow < hi; ++ow) direct_tile_flat<A, 1, NV, PART>(x, w, bias, g, off, n, oh, ow, c0, lanes, kh0, kh1, y);
  for (; ow < g.Wo; ++ow) direct_border_pixel<A, NV, PART>(x, w, bias, g, n, oh, ow, c0, lanes, kh0, kh1, y);
}

// Dense k x k conv over few input channels on folded weights, channels-last output:
// y[n, oh, ow, :] = act(bias + sum over (kh, kw, ci) of x[n, ci, ih, iw] * w[(kh * K + kw) * Cin + ci][:]).
// A network's stem (3 input channels): a GEMM would first have to gather 27-value patches, and
// oneDNN's kernel for it ran at a third of the FMA rate here. Work items: (image, output row).
template <typename scalar_t>
void EvalKernels<scalar_t>::direct_conv_cl(const float* x, const float* w, const float* bias, const DirectGeo& g,
                                           Act act, float* y) {
  const int64_t rows = g.N * g.Ho;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, g.Wo * g.K * g.K * g.Cin * g.Cout));
  int64_t off[7 * 7 * 4];  // K <= 7, Cin <= 4 (direct_conv_eval checks both)
  for (int64_t kh = 0, t = 0; kh < g.K; ++kh)
    for (int64_t kw = 0; kw < g.K; ++kw)
      for (int64_t ci = 0; ci < g.Cin; ++ci) off[t++] = kh * g.sh + kw * g.sw + ci * g.sc;
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t n = row / g.Ho, oh = row % g.Ho;
        const int64_t kh0 = std::max<int64_t>(0, g.top - oh * g.S);
        const int64_t kh1 = std::min<int64_t>(g.K, g.H + g.top - oh * g.S);
        int64_t c0 = 0;
        for (; c0 + 4 * kVL <= g.Cout; c0 += 4 * kVL)
          direct_row_block<A, 4, false>(x, w, bias, g, off, n, oh, c0, kVL, kh0, kh1, y);
        switch ((g.Cout - c0) / kVL) {  // the remaining whole vectors in one pass over x
          case 3: direct_row_block<A, 3, false>(x, w, bias, g, off, n, oh, c0, kVL, kh0, kh1, y); break;
          case 2: direct_row_block<A, 2, false>(x, w, bias, g, off, n, oh, c0, kVL, kh0, kh1, y); break;
          case 1: direct_row_block<A, 1, false>(x, w, bias, g, off, n, oh, c0, kVL, kh0, kh1, y); break;
          default: break;
        }
        c0 += (g.Cout - c0) / kVL * kVL;
        if (c0 < g.Cout)
          direct_row_block<A, 1, true>(x, w, bias, g, off, n, oh, c0, static_cast<int>(g.Cout - c0), kh0, kh1, y);
      }
    });
  });
}

// A residual added to the first `channels` output channels (all of them, or fewer: ReXNet adds
// its input to the leading channels of a wider output); channels-last rows of `channels` floats.
struct Residual {
  const float* p;
  int64_t channels;
};

// u + the residual's channels [c, c + n) of pixel `pixel` (n <= kVL lanes of u).
inline fb_vf add_residual(fb_vf u, const Residual& r, int64_t pixel, int64_t c, int n) {
  const int64_t have = std::min<int64_t>(n, r.channels - c);
  if (have <= 0) return u;
  const float* p = r.p + pixel * r.channels + c;
  return u + (have == kVL ? vload<float>(p) : vload_part(p, static_cast<int>(have)));
}

// One register tile of a channels-last 1x1 conv: pixels [p0, p0 + PT) of x (rows of Cin floats),
// NV output vectors from c0 (PART: the last of them has only `lanes` channels, the row's tail),
// the bias, the residual (res.p optional) and the activation applied before the only store.
// w: the weights of output channels [c0, c0 + NV vectors), input channel ci's at w + ci * wrs.
// SC: input channel ci is scaled by sc[ci] (an SE gate), applied to the tile's NV weight vectors
// of that channel, so it costs NV multiplies per PT * NV FMAs.
template <Act A, int PT, int NV, bool PART, bool SC>
inline void pointwise_tile(const float* x, int64_t Cin, const float* w, int64_t wrs, int64_t Cout, const float* bias,
                           const float* sc, const Residual& res, float* y, int64_t p0, int64_t c0, int lanes) {
  constexpr int L = kVL;
  fb_vf acc[PT][NV];
  tile_from_bias<PT, NV, PART>(acc, bias + c0, lanes);
  const float* xp = x + p0 * Cin;
  const float* wk = w;
  for (int64_t ci = 0; ci < Cin; ++ci, wk += wrs, ++xp) {
    fb_vf wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = PART && v == NV - 1 ? vload_part(wk + v * L, lanes) : vload<float>(wk + v * L);
    if constexpr (SC) {
      const fb_vf s = bc<fb_vf>(sc[ci]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) wv[v] *= s;
    }
    tile_outer_fma(acc, xp, Cin, wv);
  }
#pragma GCC unroll 16
  for (int p = 0; p < PT; ++p) {
    float* yp = y + (p0 + p) * Cout + c0;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      const bool part = PART && v == NV - 1;
      fb_vf u = acc[p][v];
      if (res.p) u = add_residual(u, res, p0 + p, c0 + v * L, part ? lanes : L);
      if (part) {
        store_act<A, true>(yp + v * L, u, lanes);
      } else {
        store_act<A, false>(yp + v * L, u, lanes);
      }
    }
  }
}

// Pixels [p0, p1) x channels [c0, c0 + NV vectors) (PART: [c0, c0 + lanes)) in register tiles.
template <Act A, int NV, bool PART, bool SC>
inline void pointwise_block(const float* x, int64_t Cin, const float* w, int64_t wrs, int64_t Cout,
                            const float* bias, const float* sc, const Residual& res, float* y, int64_t p0, int64_t p1,
                            int64_t c0, int lanes) {
  // PT * NV accumulators + NV weights + a broadcast in the vector registers (32 with AVX-512)
  constexpr int kRegs = FB_ISA_LEVEL == 2 ? 32 : 16;
  constexpr int PT = std::min(12, std::max(1, (kRegs - NV - 2) / NV));
  int64_t p = p0;
  for (; p + PT <= p1; p += PT)
    pointwise_tile<A, PT, NV, PART, SC>(x, Cin, w, wrs, Cout, bias, sc, res, y, p, c0, lanes);
  if constexpr (PT >= 4) {
    for (; p + 4 <= p1; p += 4)
      pointwise_tile<A, 4, NV, PART, SC>(x, Cin, w, wrs, Cout, bias, sc, res, y, p, c0, lanes);
  }
  for (; p < p1; ++p) pointwise_tile<A, 1, NV, PART, SC>(x, Cin, w, wrs, Cout, bias, sc, res, y, p, c0, lanes);
}

// Packed 1x1 weights come in panels of kPanel output channels ([ceil(C_out / kPanel)][C_in][kPanel],
// conv_fusion.weight_panels), whatever the vector width: a chunk of 4 vectors is a whole panel
// with AVX-512 and half of one with AVX2.
constexpr int64_t kPanel = 64;
static_assert(kPanel % (4 * kVL) == 0, "a chunk of 4 vectors must not straddle two weight panels");

// The weights of output channels from c0 (a multiple of the chunk width) and the distance
// between consecutive input channels' weights: packed panels or row-major (C_in, C_out).
inline std::pair<const float*, int64_t> chunk_weights(const float* w, bool packed, int64_t Cin, int64_t Cout,
                                                      int64_t c0) {
  if (!packed) return {w + c0, Cout};
  return {w + c0 / kPanel * Cin * kPanel + c0 % kPanel, kPanel};
}

// Pixels [p0, p1) x output channels [c0, c0 + width) (width <= 4 vectors: one chunk) in register
// tiles; w: those channels' weights, input channel ci's at w + ci * wrs.
template <Act A, bool SC>
inline void pointwise_chunk(int64_t width, const float* x, int64_t Cin, const float* w, int64_t wrs, int64_t Cout,
                            const float* bias, const float* sc, const Residual& r, float* y, int64_t p0, int64_t p1,
                            int64_t c0) {
  const int tail = static_cast<int>(width % kVL);  // a partial last vector shares the tiles' loads of x
  switch ((width + kVL - 1) / kVL * 2 + (tail != 0)) {
    case 8: pointwise_block<A, 4, false, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, kVL); break;
    case 9: pointwise_block<A, 4, true, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, tail); break;
    case 6: pointwise_block<A, 3, false, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, kVL); break;
    case 7: pointwise_block<A, 3, true, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, tail); break;
    case 4: pointwise_block<A, 2, false, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, kVL); break;
    case 5: pointwise_block<A, 2, true, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, tail); break;
    case 2: pointwise_block<A, 1, false, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, kVL); break;
    default: pointwise_block<A, 1, true, SC>(x, Cin, w, wrs, Cout, bias, sc, r, y, p0, p1, c0, tail); break;
  }
}

// A channels-last 1x1 conv on folded weights with its epilogue in registers:
// y[n, p, :] = act((x[n, p, :] * scale[n, :]) @ w + bias (+ res[n, p, :res_channels])) for N
// images of P pixels; w (Cin, Cout) either row-major (packed = false) or packed in panels of 64
// output channels, [ceil(Cout / 64)][Cin][64] zero-padded (packed = true: each tile then reads one
// contiguous stream of weights instead of Cin rows Cout floats apart; 1.1-1.2x on 1280-wide
// layers); res (optional) rows of res_channels floats, scale (optional,
// N x Cin: per image and input channel, e.g. a squeeze-and-excitation gate) applied to the
// weights inside the tiles. Work items: (image, block of pixels, block of 4 output vectors), the
// output written once.
template <typename scalar_t>
void EvalKernels<scalar_t>::pointwise_cl(const float* x, int64_t N, int64_t P, int64_t Cin, const float* w,
                                         bool packed, const float* scale, int64_t Cout, const float* bias,
                                         const float* res, int64_t res_channels, Act act, float* y) {
  constexpr int64_t kChunk = 4 * kVL;
  const Residual r{res, res_channels};
  const int64_t chunks = (Cout + kChunk - 1) / kChunk;
  // pixel blocks of about 48 pixels (4 tiles of 12), equal in size within an image; smaller where
  // that leaves few items that do not split evenly over the threads (5 items on 2 threads: a
  // batch-1 projection of a 14x14 map to one chunk ran 3-8% slower than with 6)
  const int64_t nt = at::get_num_threads();
  int64_t target = 48;
  auto items_for = [&](int64_t t) { return N * ((P + t - 1) / t) * chunks; };
  while (target > 12 && items_for(target) < 4 * nt && items_for(target) % nt != 0) target -= 12;
  const int64_t blocks = std::max<int64_t>(1, (P + target - 1) / target);
  const int64_t block = (P + blocks - 1) / blocks;
  const int64_t items = N * blocks * chunks;
  const int64_t grain = std::max<int64_t>(1, (1 << 17) / std::max<int64_t>(1, block * Cin * kChunk));
  auto run = [&](auto act_tag, auto scaled) {
    constexpr Act A = decltype(act_tag)::value;
    constexpr bool SC = decltype(scaled)::value;
    at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t chunk = item % chunks, b = item / chunks % blocks, n = item / chunks / blocks;
        const int64_t p0 = n * P + b * block, p1 = n * P + std::min(P, (b + 1) * block);
        if (p1 <= p0) continue;
        const float* sc = SC ? scale + n * Cin : nullptr;
        const int64_t c0 = chunk * kChunk;
        const auto [wc, wrs] = chunk_weights(w, packed, Cin, Cout, c0);
        pointwise_chunk<A, SC>(std::min(kChunk, Cout - c0), x, Cin, wc, wrs, Cout, bias, sc, r, y, p0, p1, c0);
      }
    });
  };
  dispatch_act(act, [&](auto tag) {
    if (scale != nullptr) {
      run(tag, std::true_type{});
    } else {
      run(tag, std::false_type{});
    }
  });
}

// A 64-byte aligned buffer of at least n floats for the calling thread, kept for its life.
inline float* thread_buffer(int64_t n) {
  thread_local Scratch buffer;
  return buffer.get(n);
}

// Output rows [ob0, ob1) of a depthwise layer `step` rows at a time, over a ring of `ring`
// expanded input rows (ring = 0: no ring): before each step, expand(r0, r1, slot) fills the input
// rows [r0, r1) the step reads and the ring does not hold yet into slots slot.., split where the
// ring wraps; then run(oh, oe) computes output rows [oh, oe).
template <typename Expand, typename Run>
inline void ring_steps(const ConvGeo& g, int64_t ob0, int64_t ob1, int64_t step, int64_t ring, Expand&& expand,
                       Run&& run) {
  int64_t have = -1;  // input rows below `have` that the rows from ob0 read are in the ring
  for (int64_t oh = ob0; oh < ob1; oh += step) {
    const int64_t oe = std::min(oh + step, ob1);
    if (ring > 0) {
      const int64_t lo = std::max<int64_t>(0, oh * g.S - g.top);
      const int64_t hi = std::min<int64_t>(g.H, (oe - 1) * g.S - g.top + g.K);
      for (int64_t r0 = std::max(lo, have); r0 < hi;) {
        const int64_t slot = r0 % ring, r1 = std::min(hi, r0 + ring - slot);
        expand(r0, r1, slot);
        r0 = r1;
      }
      have = std::max(have, hi);
    }
    run(oh, oe);
  }
}

// An inverted-residual block's expansion 1x1 conv and depthwise conv in one pass, the expanded
// map never stored whole: z = dw_act(dwconv(expand_act(x @ ew + eb), dw_w) + dw_b). g is the
// depthwise layer's geometry (C = the E expanded channels, H x W the map of x, Cin channels);
// ew, eb: the expansion's weights as in pointwise_cl (packed or row-major) and bias; dw_w, dw_b:
// as in dw_eval_cl, and so are z and pool_rows. Work items: (image, band of output rows, chunk
// of 4 channel vectors). An item expands the input rows its output rows read, a few rows at a
// time, into a ring of rows (the chunk's channels only) in its thread's buffer, so each
// expanded row is computed once per band and read from cache by the depthwise taps.
template <typename scalar_t>
void EvalKernels<scalar_t>::expand_dw_cl(const float* x, int64_t Cin, const float* ew, bool packed, const float* eb,
                                         Act expand_act, const float* dw_w, const float* dw_b, const ConvGeo& g,
                                         Act dw_act, float* z, float* pool_rows) {
  constexpr int64_t kChunk = 4 * kVL;
  const int64_t E = g.C, chunks = (E + kChunk - 1) / kChunk;
  const int64_t nt = at::get_num_threads();
  // bands only where images x chunks would leave a thread idle: a band expands again the
  // K - S input rows it shares with the next one
  const int64_t bands = std::min<int64_t>(g.Ho, std::max<int64_t>(1, (2 * nt + g.N * chunks - 1) / (g.N * chunks)));
  const int64_t band = (g.Ho + bands - 1) / bands;
  // output rows per step: an expansion call gets at least 48 pixels (4 register tiles)
  const int64_t step = std::max<int64_t>(1, (48 + g.S * g.W - 1) / (g.S * g.W));
  const int64_t ring = (step - 1) * g.S + g.K;  // rows, enough for one step's taps
  const int64_t row_floats = g.W * kChunk;
  const Residual none{nullptr, 0};
  at::parallel_for(0, g.N * bands * chunks, 1, [&](int64_t i0, int64_t i1) {
    float* buf = thread_buffer(ring * row_floats);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t chunk = item % chunks, b = item / chunks % bands, n = item / chunks / bands;
      const int64_t c0 = chunk * kChunk, width = std::min(kChunk, E - c0);
      const auto [wc, wrs] = chunk_weights(ew, packed, Cin, E, c0);
      const float* xn = x + n * g.H * g.W * Cin;
      // input rows [r0, r1) into the ring from slot `slot` (one 64-channel chunk of them)
      auto expand = [&](int64_t r0, int64_t r1, int64_t slot) {
        dispatch_act(expand_act, [&](auto tag) {
          pointwise_chunk<decltype(tag)::value, false>(width, xn + r0 * g.W * Cin, Cin, wc, wrs, kChunk, eb + c0,
                                                       nullptr, none, buf + slot * row_floats, 0, (r1 - r0) * g.W, 0);
        });
      };
      auto run = [&](int64_t oh, int64_t oe) {
        dispatch_act(dw_act, [&](auto tag) {
          for (int64_t o = oh; o < oe; ++o) {
            const DwRows in = dw_input_rows(g, o, kChunk, [&](int64_t ih) { return buf + ih % ring * row_floats; });
            const int64_t row = n * g.Ho + o;
            dw_eval_chunk<decltype(tag)::value>(in, 0, dw_w + c0, dw_b + c0, g, width, in.kh0, in.kh1,
                                                z + row * g.Wo * E + c0, pool_rows ? pool_rows + row * E + c0 : nullptr);
          }
        });
      };
      ring_steps(g, b * band, std::min(g.Ho, (b + 1) * band), step, ring, expand, run);
    }
  });
}

// An inverted-residual block without squeeze-and-excitation in one pass over bands of output
// rows: y = (dw_act(dwconv(expand_act(x @ ew + eb), dw_w) + dw_b)) @ pw + pb (+ x on the first Cin
// of the Cout channels where `residual`). ew = nullptr: no expansion (x is the depthwise input).
// g: the depthwise layer's geometry (C = E channels, H x W the map of x). Weights as in
// pointwise_cl, dw_w / dw_b as in dw_eval_cl. Work items: (image, band of `band` output rows);
// an item steps through its rows a few at a time: expands the new input rows (all E channels)
// into a ring of rows in its thread's buffer, runs the depthwise taps on them into a buffer of
// the step's output rows and projects those into y, so neither intermediate map is stored
// whole. The caller picks `band` (a band expands again the K - S input rows it shares with the
// next one).
template <typename scalar_t>
void EvalKernels<scalar_t>::mbconv_rows_cl(const float* x, int64_t Cin, const float* ew, bool epacked,
                                           const float* eb, Act expand_act, const float* dw_w, const float* dw_b,
                                           const ConvGeo& g, Act dw_act, const float* pw, bool ppacked,
                                           const float* pb, int64_t Cout, bool residual, int64_t band, float* y) {
  constexpr int64_t kChunk = 4 * kVL;
  const int64_t E = g.C, bands = (g.Ho + band - 1) / band;
  const bool expand = ew != nullptr;
  // output rows per step: a projection call gets at least 48 pixels (4 register tiles)
  const int64_t step = std::max<int64_t>(1, (48 + g.Wo - 1) / g.Wo);
  const int64_t ring = expand ? (step - 1) * g.S + g.K : 0;  // rows, enough for one step's taps
  const int64_t row_floats = g.W * E;
  const Residual none{nullptr, 0};
  // the chunks of 4 output vectors of a 1x1 conv over `count` pixels
  auto conv_1x1 = [&](Act act, const float* in, int64_t cin, const float* w, bool packed, const float* bias,
                      int64_t cout, const Residual& res, float* out, int64_t count) {
    dispatch_act(act, [&](auto tag) {
      for (int64_t c0 = 0; c0 < cout; c0 += kChunk) {
        const auto [wc, wrs] = chunk_weights(w, packed, cin, cout, c0);
        pointwise_chunk<decltype(tag)::value, false>(std::min(kChunk, cout - c0), in, cin, wc, wrs, cout, bias,
                                                     nullptr, res, out, 0, count, c0);
      }
    });
  };
  at::parallel_for(0, g.N * bands, 1, [&](int64_t i0, int64_t i1) {
    float* ring_buf = thread_buffer(ring * row_floats + step * g.Wo * E);
    float* z = ring_buf + ring * row_floats;
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item % bands, n = item / bands;
      const float* xn = x + n * g.H * g.W * Cin;
      auto expand_rows = [&](int64_t r0, int64_t r1, int64_t slot) {
        conv_1x1(expand_act, xn + r0 * g.W * Cin, Cin, ew, epacked, eb, E, none, ring_buf + slot * row_floats,
                 (r1 - r0) * g.W);
      };
      auto run = [&](int64_t oh, int64_t oe) {
        dispatch_act(dw_act, [&](auto tag) {
          for (int64_t o = oh; o < oe; ++o) {
            const DwRows in = dw_input_rows(g, o, E, [&](int64_t ih) {
              return expand ? ring_buf + ih % ring * row_floats : xn + ih * row_floats;
            });
            for (int64_t c0 = 0; c0 < E; c0 += kChunk)
              dw_eval_chunk<decltype(tag)::value>(in, c0, dw_w + c0, dw_b + c0, g, std::min(kChunk, E - c0), in.kh0,
                                                  in.kh1, z + (o - oh) * g.Wo * E + c0, nullptr);
          }
        });
        const Residual res{residual ? xn + oh * g.W * Cin : nullptr, Cin};
        conv_1x1(Act::Identity, z, E, pw, ppacked, pb, Cout, res, y + (n * g.Ho + oh) * g.Wo * Cout,
                 (oe - oh) * g.Wo);
      };
      ring_steps(g, b * band, std::min(g.Ho, (b + 1) * band), step, ring, expand_rows, run);
    }
  });
}

// z[n, p, c] = act(z[n, p, c] * gate[n, c]) in place over N images of P channels-last pixels: an
// SE gate applied before the activation (ReXNet gates the depthwise output, then applies ReLU6).
template <typename scalar_t>
void EvalKernels<scalar_t>::scale_act_cl(float* z, int64_t N, int64_t P, int64_t C, const float* gate, Act act) {
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    const int64_t grain = std::max<int64_t>(1, kEpilogueGrain / std::max<int64_t>(C, 1));
    at::parallel_for(0, N * P, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* zr = z + r * C;
        const float* g = gate + r / P * C;
        int64_t c = 0;
        for (; c + kVL <= C; c += kVL) vstore(zr + c, eval_act<A>(vload<float>(zr + c) * vload<float>(g + c)));
        if (c < C) {
          const int n = static_cast<int>(C - c);
          vstore_part(zr + c, eval_act<A>(vload_part(zr + c, n) * vload_part(g + c, n)), n);
        }
      }
    });
  });
}

// The squeeze-and-excitation MLP on pooled channel means: hidden = act(w1 @ p + b1),
// gate = gate_fn(w2 @ hidden + b2), per image. p: [N][C], w1: [R][C], w2: [C][R], out: [N][C].
// Four independent accumulators, so consecutive vectors do not wait on one FMA chain (no
// difference measured on whole mobilenetv3 blocks, where reading the SE weights dominates).
inline float dot_row(const float* a, const float* b, int64_t n) {
  fb_vf acc[4] = {bc<fb_vf>(0.0f), bc<fb_vf>(0.0f), bc<fb_vf>(0.0f), bc<fb_vf>(0.0f)};
  int64_t i = 0;
  for (; i + 4 * kVL <= n; i += 4 * kVL) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) acc[k] += vload<float>(a + i + k * kVL) * vload<float>(b + i + k * kVL);
  }
  for (; i + kVL <= n; i += kVL) acc[0] += vload<float>(a + i) * vload<float>(b + i);
  float s = hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename scalar_t>
void EvalKernels<scalar_t>::se_mlp(const float* pooled, int64_t N, int64_t C, int64_t R, const float* w1,
                                   const float* b1, const float* w2, const float* b2, Act act, bool hard_gate,
                                   float* gate) {
  // At batch 1 the two weight matrices (up to ~2 MB in mobilenetv3) are most of the bytes the
  // block reads: both layers split their output rows over the threads (about 32k multiply-adds a task).
  std::vector<float> hidden(N * R);
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, N * R, std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1)), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t n = j / R, r = j % R;
        hidden[j] = eval_act<A>(dot_row(w1 + r * C, pooled + n * C, C) + (b1 ? b1[r] : 0.0f));
      }
    });
  });
  at::parallel_for(0, N * C, std::max<int64_t>(1, 32768 / std::max<int64_t>(R, 1)), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n = j / C, c = j % C;
      const float u = dot_row(w2 + c * R, hidden.data() + n * R, R) + (b2 ? b2[c] : 0.0f);
      // F.hardsigmoid: min(max(u + 3, 0), 6) / 6; torch.sigmoid: 1 / (1 + exp(-u))
      gate[j] = hard_gate ? std::min(std::max(u + 3.0f, 0.0f), 6.0f) / 6.0f : 1.0f / (1.0f + fb_exp_eval(-u));
    }
  });
}
