"""Triton kernels for depthwise conv -> BatchNorm -> activation (forward and backward).

One kernel family, ``_fused_kernel``, recomputes the depthwise conv of a tile of output pixels x
a block of channels from x (zero padding is applied by masks: no padded copy of x) and then,
depending on the compile-time ``MODE``:

* ``MODE_STATS``  (training forward, pass 1): Welford statistics of z = conv(x) per (pixel
  lane, channel) over the program's tiles, merged across lanes at the end and written as one
  (count, mean, M2) row per program per channel, then merged by
  ``_welford_finalize_kernel`` in a fixed order (Chan's formula): deterministic, no atomics.
* ``MODE_NORM``   (eval forward / training forward pass 2): y = act(z * scale + shift) with the
  BN folded on the fly (scale = gamma / sqrt(var + eps), shift = beta - mean * scale); reads x
  once (plus halo re-reads from cache), writes y once. The conv output is never stored. In eval
  (``COPY_STATS``) it reads the running statistics in their own dtype and also writes the
  float32 copies the op returns.
* ``MODE_BWD_SUMS`` (training backward, pass 1): per-channel partial sums of du and du * zhat,
  du = act'(u) * dy, recomputing z from x and the saved mean / var.
* ``MODE_BWD_DZ`` (backward pass 2): dz = dBN/dz (training uses the finished sums), written in
  x's dtype when dx is needed; per-program partial dW rows (sum over pixels of dz * x_tap), and
  in eval mode the du / du * zhat sums too (eval dz does not depend on them). dW is summed either
  across threads every tile (``DW_REGS=False``) or in K*K per-thread accumulators reduced once
  per program (``DW_REGS=True``, configs with few elements a thread); the autotuner picks.

``_dx_kernel`` then gathers dx from dz through the transposed depthwise conv. With ``HAS_CONV``
False the same family is bn_act (z = x; in ``MODE_BWD_DZ`` dz *is* dx).

Tiles: (BH x BW output pixels) x (BC channels); channels_last tensors vectorise over C (the
channel stride is 1 and Triton specialises it), NCHW tensors vectorise along W. Reduction passes
run on a fixed grid of G programs per channel block, each walking a contiguous range of tiles;
G depends only on the problem size (not on the autotuned block sizes), so partial buffers have a
fixed shape and are reduced in a fixed order.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (acc_tl_dtype, acc_torch_dtype, act_bwd, act_fwd, autotune, device_guard, empty, launcher,
                      memory_format, next_pow2, sum_rows, target_programs)

# Pass selectors: plain ints for the launchers, constexpr twins for use inside kernels.
STATS, NORM, BWD_SUMS, BWD_DZ = 0, 1, 2, 3
MODE_STATS = tl.constexpr(STATS)
MODE_NORM = tl.constexpr(NORM)
MODE_BWD_SUMS = tl.constexpr(BWD_SUMS)
MODE_BWD_DZ = tl.constexpr(BWD_DZ)


def _configs_channels_last():
    c = triton.Config
    return [
        c({"BH": 4, "BW": 8, "BC": 32}, num_warps=4),
        c({"BH": 8, "BW": 8, "BC": 32}, num_warps=4),
        c({"BH": 4, "BW": 8, "BC": 64}, num_warps=4),
        c({"BH": 8, "BW": 8, "BC": 64}, num_warps=8),
        c({"BH": 8, "BW": 16, "BC": 32}, num_warps=8),
        c({"BH": 2, "BW": 8, "BC": 128}, num_warps=4),
    ]


def _configs_nchw():
    c = triton.Config
    return [
        c({"BH": 8, "BW": 32, "BC": 1}, num_warps=4),
        c({"BH": 16, "BW": 32, "BC": 1}, num_warps=4),
        c({"BH": 4, "BW": 64, "BC": 1}, num_warps=4),
        c({"BH": 16, "BW": 16, "BC": 2}, num_warps=4),
        c({"BH": 8, "BW": 8, "BC": 4}, num_warps=4),
        c({"BH": 4, "BW": 8, "BC": 8}, num_warps=4),
    ]


def _with_dw_regs(configs, dw_regs_configs):
    """The fused kernel's configs: ``configs`` with the dW reduced across threads every tile
    (DW_REGS=False) plus ``dw_regs_configs`` with per-tap register accumulators (DW_REGS=True;
    small tiles: K*K accumulators per element a thread holds)."""
    out = []
    for cfg, flag in [(c, False) for c in configs] + [(c, True) for c in dw_regs_configs]:
        out.append(triton.Config(dict(cfg.kwargs, DW_REGS=flag), num_warps=cfg.num_warps,
                                 num_stages=cfg.num_stages))
    return out


def _dw_regs_prune(configs, named_args, **kwargs):
    """DW_REGS only changes the backward pass that reduces dW: elsewhere its configs would compile
    the same code twice. Keep them where the K*K accumulators fit (<= 128 registers a thread)."""
    need_dw = bool(kwargs.get("NEED_DW", named_args.get("NEED_DW")))
    k = int(kwargs.get("K", named_args.get("K", 1)))

    def fits(cfg):
        per_thread = cfg.kwargs["BH"] * cfg.kwargs["BW"] * cfg.kwargs["BC"] // (32 * cfg.num_warps)
        return k * k * max(per_thread, 1) <= 128

    kept = [c for c in configs if not c.kwargs["DW_REGS"] or (need_dw and fits(c))]
    return kept or configs[:1]


# Under the interpreter: one config with big blocks (each program costs Python time).
_INTERP_CONFIG = triton.Config({"BH": 8, "BW": 8, "BC": 8})
_INTERP_FUSED_CONFIG = triton.Config({"BH": 8, "BW": 8, "BC": 8, "DW_REGS": 0})
_KEY = ["C", "HWO", "K", "STRIDE", "MODE", "HAS_CONV", "NEED_DW"]


@triton.jit
def _tap_row(oh, kh, mask_p, H, sxh, pad_t, STRIDE: tl.constexpr):
    """(in-image mask, x offset) of input row kh of the taps of output rows oh."""
    ih = oh * STRIDE + (kh - pad_t)
    return mask_p & (ih >= 0) & (ih < H), ih * sxh


@triton.jit
def _x_tap(x_base, row_ok, row_off, ow, kw, mask_c, W, sxw, pad_l, STRIDE: tl.constexpr):
    """x under tap (kh, kw) of the output pixels, (BH*BW, BC), 0 in the padding; (row_ok,
    row_off) from :func:`_tap_row`. Serves the conv and the dW reduction (which re-reads the
    taps from cache)."""
    iw = ow * STRIDE + (kw - pad_l)
    ok = row_ok & (iw >= 0) & (iw < W)
    return tl.load(x_base + (row_off + iw * sxw)[:, None], mask=ok[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _fused_kernel(
    x_ptr, w_ptr, cb_ptr, gamma_ptr, beta_ptr, mean_ptr, var_ptr,
    out_ptr, dy_ptr, sdu_ptr, sduz_ptr, p0_ptr, p1_ptr, p2_ptr,
    N, C, H, W, Ho, Wo, HWO,
    sxn, sxc, sxh, sxw, son, soc, soh, sow, sdn, sdc, sdh, sdw,
    pad_t, pad_l, eps, count,
    K: tl.constexpr, KK_PAD: tl.constexpr, STRIDE: tl.constexpr, HAS_CONV: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    MODE: tl.constexpr, TRAINING: tl.constexpr, ACT: tl.constexpr,
    NEED_SUMS: tl.constexpr, NEED_DW: tl.constexpr, WRITE_OUT: tl.constexpr, COPY_STATS: tl.constexpr,
    ACC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr, DW_REGS: tl.constexpr,
):
    pid_g = tl.program_id(0)
    pid_c = tl.program_id(1)
    tiles_w = tl.cdiv(Wo, BW)
    tiles_img = tl.cdiv(Ho, BH) * tiles_w
    total = N * tiles_img
    chunk = tl.cdiv(total, tl.num_programs(0))
    t_begin = pid_g * chunk
    t_end = tl.minimum(t_begin + chunk, total)

    offs_c = pid_c * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    offs_i = tl.arange(0, BH * BW)
    di = offs_i // BW
    dj = offs_i % BW
    # Loads are masked on the channel too (no clamped indices: a min() hides the channels'
    # contiguity from Triton's alignment analysis and every load becomes a 2-byte scalar one).
    # The weights are tap-major (K*K, C), so each tap's row is one vector load per thread.
    x_rows = x_ptr + (offs_c * sxc)[None, :]
    o_c_off = (offs_c * soc)[None, :]
    d_c_off = (offs_c * sdc)[None, :]

    # Per-channel parameters, folded once per program.
    if HAS_GAMMA:
        gamma = tl.load(gamma_ptr + offs_c, mask=mask_c, other=1.0).to(ACC)
    else:
        gamma = tl.full([BC], 1.0, ACC)
    if HAS_BETA:
        beta = tl.load(beta_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    else:
        beta = tl.zeros([BC], ACC)
    if HAS_BIAS:
        cbias = tl.load(cb_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    else:
        cbias = tl.zeros([BC], ACC)
    if MODE != MODE_STATS:
        mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
        var = tl.load(var_ptr + offs_c, mask=mask_c, other=1.0).to(ACC)
        invstd = 1.0 / tl.sqrt(var + eps)
        scale = gamma * invstd
        shift = beta - mean * scale
        if COPY_STATS:
            # eval: the op returns the running statistics it used as fresh (ACC) tensors; the
            # first row of programs writes them (no clone kernels beside this launch)
            if pid_g == 0:
                tl.store(p0_ptr + offs_c, mean, mask=mask_c)
                tl.store(p1_ptr + offs_c, var, mask=mask_c)
    if MODE == MODE_BWD_DZ:
        if TRAINING:
            mdu = tl.load(sdu_ptr + offs_c, mask=mask_c, other=0.0).to(ACC) / count
            mduz = tl.load(sduz_ptr + offs_c, mask=mask_c, other=0.0).to(ACC) / count

    # Accumulators (dead ones are removed by the compiler).
    # Welford state per (pixel lane, channel): merged across lanes once, after the loop, so a
    # tile costs no cross-thread reduction (the lane count is the same for every channel).
    w_n = tl.zeros([BH * BW], ACC)
    w_mean = tl.zeros([BH * BW, BC], ACC)
    w_m2 = tl.zeros([BH * BW, BC], ACC)
    acc_du = tl.zeros([BH * BW, BC], ACC)
    acc_duz = tl.zeros([BH * BW, BC], ACC)
    acc_dw = tl.zeros([KK_PAD, BC], ACC)
    kk_idx = tl.arange(0, KK_PAD)
    if NEED_DW and DW_REGS:
        # One (pixel lane, channel) accumulator per tap, reduced across threads once after the
        # loop: no K*K cross-thread reductions per tile, at K*K x (elements per thread) registers.
        dw_taps = ()
        for tap in tl.static_range(K * K):
            dw_taps = dw_taps + (tl.zeros([BH * BW, BC], ACC),)

    for t in range(t_begin, t_end):
        n = t // tiles_img
        r = t - n * tiles_img
        th = r // tiles_w
        tw = r - th * tiles_w
        oh = th * BH + di
        ow = tw * BW + dj
        mask_p = (oh < Ho) & (ow < Wo)
        mask2 = mask_p[:, None] & mask_c[None, :]
        n64 = n.to(tl.int64)
        x_base = x_rows + n64 * sxn

        # z = depthwise conv (+ bias), fp32 (fp64) accumulation.
        if HAS_CONV:
            z = tl.zeros([BH * BW, BC], ACC)
            # A run-time loop over the kernel rows: the weights of one row are live at a time.
            # (Unrolled, the compiler keeps all K*K weight vectors in registers across the tile
            # loop: 200 fp32 registers a thread at k5, and every config spilled.)
            for kh in range(K):
                row_ok, row_off = _tap_row(oh, kh, mask_p, H, sxh, pad_t, STRIDE)
                for kw in tl.static_range(K):
                    xv = _x_tap(x_base, row_ok, row_off, ow, kw, mask_c, W, sxw, pad_l, STRIDE)
                    wv = tl.load(w_ptr + (kh * K + kw) * C + offs_c, mask=mask_c, other=0.0)
                    z += xv.to(ACC) * wv[None, :]
            z += cbias[None, :]
        else:
            z = tl.load(x_base + (oh * sxh + ow * sxw)[:, None], mask=mask2, other=0.0).to(ACC)

        if MODE == MODE_STATS:
            w_n += mask_p.to(ACC)
            inv_n = 1.0 / tl.maximum(w_n, 1.0)
            delta = tl.where(mask2, z - w_mean, 0.0)
            w_mean += delta * inv_n[:, None]
            w_m2 += delta * (z - w_mean)
        elif MODE == MODE_NORM:
            y = act_fwd(z * scale[None, :] + shift[None, :], ACT)
            o_ptrs = out_ptr + n64 * son + (oh * soh + ow * sow)[:, None] + o_c_off
            tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask2)
        else:
            zhat = (z - mean[None, :]) * invstd[None, :]
            u = zhat * gamma[None, :] + beta[None, :]
            d_ptrs = dy_ptr + n64 * sdn + (oh * sdh + ow * sdw)[:, None] + d_c_off
            dy = tl.load(d_ptrs, mask=mask2, other=0.0).to(ACC)
            du = tl.where(mask2, act_bwd(u, dy, ACT), 0.0)
            if NEED_SUMS:
                acc_du += du
                acc_duz += du * zhat
            if MODE == MODE_BWD_DZ:
                if TRAINING:
                    dz = scale[None, :] * (du - mdu[None, :] - zhat * mduz[None, :])
                else:
                    dz = scale[None, :] * du
                dz = tl.where(mask2, dz, 0.0)
                if WRITE_OUT:
                    o_ptrs = out_ptr + n64 * son + (oh * soh + ow * sow)[:, None] + o_c_off
                    tl.store(o_ptrs, dz.to(out_ptr.dtype.element_ty), mask=mask2)
                if NEED_DW:
                    # dW[c, tap] += sum_p dz * x_tap (taps re-read from cache, not DRAM).
                    if DW_REGS:
                        new_taps = ()
                    for kh in tl.static_range(K):
                        row_ok, row_off = _tap_row(oh, kh, mask_p, H, sxh, pad_t, STRIDE)
                        for kw in tl.static_range(K):
                            xv = _x_tap(x_base, row_ok, row_off, ow, kw, mask_c, W, sxw, pad_l, STRIDE)
                            if DW_REGS:
                                new_taps = new_taps + (dw_taps[kh * K + kw] + dz * xv.to(ACC),)
                            else:
                                contrib = tl.sum(dz * xv.to(ACC), axis=0)
                                acc_dw += tl.where(kk_idx[:, None] == kh * K + kw, contrib[None, :], 0.0)
                    if DW_REGS:
                        dw_taps = new_taps

    row = pid_g * C + offs_c
    if MODE == MODE_STATS:
        # Chan's merge of the lanes: (n, mean, M2) of the program's pixels per channel.
        lane_n = w_n[:, None]
        n_tot = tl.sum(lane_n + tl.zeros([BH * BW, BC], ACC), axis=0)
        mean_c = tl.sum(lane_n * w_mean, axis=0) / tl.maximum(n_tot, 1.0)
        dev = w_mean - mean_c[None, :]
        m2_c = tl.sum(w_m2 + lane_n * dev * dev, axis=0)
        tl.store(p0_ptr + row, n_tot, mask=mask_c)
        tl.store(p1_ptr + row, mean_c, mask=mask_c)
        tl.store(p2_ptr + row, m2_c, mask=mask_c)
    if NEED_SUMS:
        tl.store(p0_ptr + row, tl.sum(acc_du, axis=0), mask=mask_c)
        tl.store(p1_ptr + row, tl.sum(acc_duz, axis=0), mask=mask_c)
    if NEED_DW:
        if DW_REGS:
            for tap in tl.static_range(K * K):
                tl.store(p2_ptr + pid_g * C * (K * K) + offs_c * (K * K) + tap, tl.sum(dw_taps[tap], axis=0),
                         mask=mask_c)
        else:
            dw_ptrs = p2_ptr + pid_g * C * (K * K) + offs_c[None, :] * (K * K) + kk_idx[:, None]
            tl.store(dw_ptrs, acc_dw, mask=(kk_idx < K * K)[:, None] & mask_c[None, :])


@triton.jit
def _welford_finalize_kernel(cnt_ptr, mean_ptr, m2_ptr, out_mean_ptr, out_var_ptr, G, C,
                             BR: tl.constexpr, BC: tl.constexpr, ACC: tl.constexpr):
    """Merge G per-program (count, mean, M2) rows per channel, in a fixed order (Chan et al.)."""
    pid = tl.program_id(0)
    offs_c = pid * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    n_acc = tl.zeros([BR, BC], ACC)
    s_acc = tl.zeros([BR, BC], ACC)
    for g0 in range(0, G, BR):
        offs_g = g0 + tl.arange(0, BR)
        mask = (offs_g < G)[:, None] & mask_c[None, :]
        idx = offs_g[:, None] * C + offs_c[None, :]
        n_i = tl.load(cnt_ptr + idx, mask=mask, other=0.0)
        m_i = tl.load(mean_ptr + idx, mask=mask, other=0.0)
        n_acc += n_i
        s_acc += n_i * m_i
    n_tot = tl.where(mask_c, tl.sum(n_acc, axis=0), 1.0)
    mean = tl.sum(s_acc, axis=0) / n_tot
    m2_acc = tl.zeros([BR, BC], ACC)
    for g0 in range(0, G, BR):
        offs_g = g0 + tl.arange(0, BR)
        mask = (offs_g < G)[:, None] & mask_c[None, :]
        idx = offs_g[:, None] * C + offs_c[None, :]
        n_i = tl.load(cnt_ptr + idx, mask=mask, other=0.0)
        m_i = tl.load(mean_ptr + idx, mask=mask, other=0.0)
        m2_i = tl.load(m2_ptr + idx, mask=mask, other=0.0)
        d = m_i - mean[None, :]
        m2_acc += m2_i + n_i * d * d
    tl.store(out_mean_ptr + offs_c, mean, mask=mask_c)
    tl.store(out_var_ptr + offs_c, tl.sum(m2_acc, axis=0) / n_tot, mask=mask_c)


@triton.jit
def _dx_kernel(dz_ptr, w_ptr, dx_ptr, N, C, H, W, Ho, Wo, HWO,
               szn, szc, szh, szw, sxn, sxc, sxh, sxw, pad_t, pad_l,
               K: tl.constexpr, STRIDE: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
               PAR_H: tl.constexpr, PAR_W: tl.constexpr, ACC: tl.constexpr,
               BH: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr):
    """dx[n, c, i, j] = sum_{kh, kw} dz[n, c, (i + pad_t - kh) / s, (j + pad_l - kw) / s] * w[c, kh, kw]
    over the taps where the division is exact and in range: a gather, so no atomics.

    Stride 2: one launch per input parity class (i % 2, j % 2) = (PH, PW); only the taps with
    kh % 2 == PAR_H = (PH + pad_t) % 2 (same for kw) reach it, selected at compile time, so each
    input pixel costs ~K*K/4 taps instead of K*K masked ones."""
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    hs = tl.cdiv(H - PH, STRIDE)
    ws = tl.cdiv(W - PW, STRIDE)
    tiles_w = tl.cdiv(ws, BW)
    tiles_img = tl.cdiv(hs, BH) * tiles_w
    n = pid_t // tiles_img
    r = pid_t - n * tiles_img
    th = r // tiles_w
    tw = r - th * tiles_w
    offs_i = tl.arange(0, BH * BW)
    a = th * BH + offs_i // BW
    b = tw * BW + offs_i % BW
    mask_p = (a < hs) & (b < ws)
    ih = a * STRIDE + PH
    iw = b * STRIDE + PW
    offs_c = pid_c * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    n64 = n.to(tl.int64)
    z_base = dz_ptr + n64 * szn + (offs_c * szc)[None, :]
    acc = tl.zeros([BH * BW, BC], ACC)
    for kh in tl.static_range(K):
        if kh % STRIDE == PAR_H:
            if STRIDE == 1:
                oh = ih + (pad_t - kh)
            else:
                oh = (ih + (pad_t - kh)) // STRIDE  # exact: the numerator is even
            ok_h = mask_p & (oh >= 0) & (oh < Ho)
            row_off = oh * szh
            for kw in tl.static_range(K):
                if kw % STRIDE == PAR_W:
                    if STRIDE == 1:
                        ow = iw + (pad_l - kw)
                    else:
                        ow = (iw + (pad_l - kw)) // STRIDE
                    ok = ok_h & (ow >= 0) & (ow < Wo)
                    dzv = tl.load(z_base + (row_off + ow * szw)[:, None], mask=ok[:, None] & mask_c[None, :],
                                  other=0.0)
                    wv = tl.load(w_ptr + (kh * K + kw) * C + offs_c, mask=mask_c, other=0.0)
                    acc += dzv.to(ACC) * wv[None, :]
    x_ptrs = dx_ptr + n64 * sxn + (ih * sxh + iw * sxw)[:, None] + (offs_c * sxc)[None, :]
    tl.store(x_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


_DW_REGS_CL = [triton.Config({"BH": 4, "BW": 8, "BC": 32}, num_warps=4),  # 8 a thread: k3 only
               triton.Config({"BH": 2, "BW": 8, "BC": 64}, num_warps=4),
               triton.Config({"BH": 2, "BW": 8, "BC": 32}, num_warps=4),
               triton.Config({"BH": 4, "BW": 8, "BC": 32}, num_warps=8),
               triton.Config({"BH": 2, "BW": 8, "BC": 32}, num_warps=8)]
_DW_REGS_NCHW = [triton.Config({"BH": 8, "BW": 32, "BC": 1}, num_warps=4),
                 triton.Config({"BH": 4, "BW": 8, "BC": 8}, num_warps=4)]
_fused_cl = autotune(_with_dw_regs(_configs_channels_last(), _DW_REGS_CL), _KEY, _INTERP_FUSED_CONFIG,
                     prune=_dw_regs_prune)(_fused_kernel)
_fused_nchw = autotune(_with_dw_regs(_configs_nchw(), _DW_REGS_NCHW), _KEY, _INTERP_FUSED_CONFIG,
                       prune=_dw_regs_prune)(_fused_kernel)
_DX_KEY = ["C", "HWO", "K", "STRIDE", "PH", "PW"]
_dx_cl = autotune(_configs_channels_last(), _DX_KEY, _INTERP_CONFIG)(_dx_kernel)
_dx_nchw = autotune(_configs_nchw(), _DX_KEY, _INTERP_CONFIG)(_dx_kernel)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _channel_fast(x: torch.Tensor) -> bool:
    """Vectorise over C (channels_last-style strides) rather than along W."""
    return x.stride(1) == 1 and x.shape[1] > 1


def _groups(device, n, ho, wo, c, channel_fast) -> int:
    """Programs per channel block in the reduction passes: enough to fill the device, at least
    ~512 output pixels each (bounds the partial buffers), independent of the block config."""
    c_blocks = triton.cdiv(c, 64) if channel_fast else c
    g = triton.cdiv(target_programs(device), max(c_blocks, 1))
    return max(1, min(g, triton.cdiv(n * ho * wo, 512)))


class _Problem:
    """Geometry and argument plumbing shared by the passes of one call."""

    def __init__(self, x, weight, conv_bias, bn_weight, bn_bias, stride, pad_t, pad_l, ho, wo, eps, act):
        self.x = x
        self.n, self.c, self.h, self.w = x.shape
        self.has_conv = weight is not None
        self.k = weight.shape[-1] if self.has_conv else 1
        # Tap-major (K*K, C) in the accumulation dtype: one contiguous row of C weights per tap
        # (transposed and cast by one copy kernel).
        self.weight = None
        if self.has_conv:
            self.weight = empty((self.k * self.k, self.c), acc_torch_dtype(x.dtype), x.device)
            self.weight.copy_(weight.reshape(self.c, self.k * self.k).t())
        self.conv_bias = conv_bias.contiguous() if conv_bias is not None else None
        self.gamma = bn_weight.contiguous() if bn_weight is not None else None
        self.beta = bn_bias.contiguous() if bn_bias is not None else None
        self.stride, self.pad_t, self.pad_l = stride, pad_t, pad_l
        self.ho, self.wo = ho, wo
        self.eps, self.act = float(eps), act
        self.fmt = memory_format(x)
        self.acc = acc_torch_dtype(x.dtype)
        self.channel_fast = _channel_fast(x)
        self.kernel = _fused_cl if self.channel_fast else _fused_nchw
        self.g = _groups(x.device, self.n, ho, wo, self.c, self.channel_fast)
        self.count = self.n * ho * wo

    def new_out(self, dtype=None):
        return empty((self.n, self.c, self.ho, self.wo), dtype or self.x.dtype, self.x.device, self.fmt)

    def partial(self, *cols):
        return empty((self.g, *cols), self.acc, self.x.device)

    def launch(self, mode, *, mean=None, var=None, out=None, dy=None, sdu=None, sduz=None,
               p0=None, p1=None, p2=None, training=False, need_sums=False, need_dw=False, copy_stats=False):
        x = self.x
        dummy = x
        out_t = out if out is not None else dummy
        dy_t = dy if dy is not None else out_t
        c = self.c
        if mode == NORM:
            def grid(meta):
                tiles = triton.cdiv(self.ho, meta["BH"]) * triton.cdiv(self.wo, meta["BW"])
                return (self.n * tiles, triton.cdiv(c, meta["BC"]))
        else:
            g = self.g

            def grid(meta):
                return (g, triton.cdiv(c, meta["BC"]))
        kk = self.k * self.k
        with device_guard(x):
            launcher(self.kernel)[grid](
                x, _or(self.weight, dummy), _or(self.conv_bias, dummy), _or(self.gamma, dummy),
                _or(self.beta, dummy), _or(mean, dummy), _or(var, dummy),
                out_t, dy_t, _or(sdu, dummy), _or(sduz, dummy), _or(p0, dummy), _or(p1, dummy), _or(p2, dummy),
                self.n, c, self.h, self.w, self.ho, self.wo, self.ho * self.wo,
                *x.stride(), *out_t.stride(), *dy_t.stride(),
                self.pad_t, self.pad_l, self.eps, self.count,
                K=self.k, KK_PAD=max(next_pow2(kk), 2), STRIDE=self.stride, HAS_CONV=self.has_conv,
                HAS_BIAS=self.conv_bias is not None, HAS_GAMMA=self.gamma is not None,
                HAS_BETA=self.beta is not None, MODE=mode, TRAINING=training, ACT=self.act,
                NEED_SUMS=need_sums, NEED_DW=need_dw, WRITE_OUT=out is not None, COPY_STATS=copy_stats,
                ACC=acc_tl_dtype(x.dtype),
            )

    def batch_stats(self):
        cnt, mean_p, m2_p = self.partial(self.c), self.partial(self.c), self.partial(self.c)
        self.launch(STATS, p0=cnt, p1=mean_p, p2=m2_p)
        mean = empty((self.c,), self.acc, self.x.device)
        var = empty((self.c,), self.acc, self.x.device)
        bc = 64
        with device_guard(self.x):
            launcher(_welford_finalize_kernel)[(triton.cdiv(self.c, bc),)](
                cnt, mean_p, m2_p, mean, var, self.g, self.c, BR=16, BC=bc, ACC=acc_tl_dtype(self.x.dtype))
        return mean, var


def _or(t, default):
    return t if t is not None else default


def forward(x: torch.Tensor, weight: Optional[torch.Tensor], conv_bias, bn_weight, bn_bias,
            running_mean, running_var, stride: int, pad_t: int, pad_l: int, ho: int, wo: int,
            training: bool, eps: float, act: str):
    """y = act(BN(dwconv(x))) and the per-channel (mean, biased var) used (float32 / float64).

    weight None means no conv (bn_act). Training: 2 passes over x (Welford stats, then
    normalise); eval: 1 pass. y has x's dtype and memory format.
    """
    p = _Problem(x, weight, conv_bias, bn_weight, bn_bias, stride, pad_t, pad_l, ho, wo, eps, act)
    y = p.new_out()
    if training:
        mean, var = p.batch_stats()
        p.launch(NORM, mean=mean, var=var, out=y)
    else:
        mean = empty((p.c,), p.acc, x.device)
        var = empty((p.c,), p.acc, x.device)
        p.launch(NORM, mean=running_mean.contiguous(), var=running_var.contiguous(), out=y, p0=mean, p1=var,
                 copy_stats=True)
    return y, mean, var


def backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], conv_bias, bn_weight,
             bn_bias, mean, var, stride: int, pad_t: int, pad_l: int, training: bool, eps: float,
             act: str, need_dx: bool, need_dw: bool, need_dgamma: bool, need_dbeta: bool,
             need_dbias: bool):
    """Gradients (dx, dweight (C,1,k,k) fp32, dgamma, dbeta, dconv_bias), None where not needed.

    Recomputes the conv from x and the saved mean / var. Training: pass 1 reduces sum(du) and
    sum(du * zhat); pass 2 writes dz (x's dtype) and per-program dW partials; a gather pass
    turns dz into dx. Eval: pass 2 also reduces the sums (dz does not need them).
    """
    ho, wo = dy.shape[2], dy.shape[3]
    p = _Problem(x, weight, conv_bias, bn_weight, bn_bias, stride, pad_t, pad_l, ho, wo, eps, act)
    mean = mean.contiguous()
    var = var.contiguous()
    need_dw = need_dw and p.has_conv
    need_dbias = need_dbias and p.has_conv
    sdu = sduz = None
    need_sums = need_dgamma or need_dbeta or (need_dbias and not training)
    if training:
        pdu, pduz = p.partial(p.c), p.partial(p.c)
        p.launch(BWD_SUMS, mean=mean, var=var, dy=dy, p0=pdu, p1=pduz, training=True, need_sums=True)
        sdu, sduz = sum_rows(pdu), sum_rows(pduz)
    dz = dwp = None
    pdu = pduz = None
    second_sums = need_sums and not training
    if need_dx or need_dw or second_sums:
        if need_dx:
            dz = p.new_out() if p.has_conv else empty(x.shape, x.dtype, x.device, p.fmt)
        if second_sums:
            pdu, pduz = p.partial(p.c), p.partial(p.c)
        if need_dw:
            dwp = p.partial(p.c, p.k * p.k)
        p.launch(BWD_DZ, mean=mean, var=var, out=dz, dy=dy, sdu=sdu, sduz=sduz, p0=pdu, p1=pduz,
                 p2=dwp, training=training, need_sums=second_sums, need_dw=need_dw)
        if second_sums:
            sdu, sduz = sum_rows(pdu), sum_rows(pduz)

    dx = None
    if need_dx:
        if p.has_conv:
            dx = empty(x.shape, x.dtype, x.device, p.fmt)
            dx_kernel = _dx_cl if p.channel_fast else _dx_nchw
            wk = p.weight

            with device_guard(x):
                for ph in range(stride):
                    for pw in range(stride):
                        hs, ws = triton.cdiv(p.h - ph, stride), triton.cdiv(p.w - pw, stride)
                        if hs <= 0 or ws <= 0:
                            continue

                        def grid(meta, hs=hs, ws=ws):
                            tiles = triton.cdiv(hs, meta["BH"]) * triton.cdiv(ws, meta["BW"])
                            return (p.n * tiles, triton.cdiv(p.c, meta["BC"]))

                        launcher(dx_kernel)[grid](dz, wk, dx, p.n, p.c, p.h, p.w, ho, wo, p.h * p.w,
                                        *dz.stride(), *dx.stride(), pad_t, pad_l,
                                        K=p.k, STRIDE=stride, PH=ph, PW=pw, PAR_H=(ph + pad_t) % stride,
                                        PAR_W=(pw + pad_l) % stride, ACC=acc_tl_dtype(x.dtype))
        else:
            dx = dz
    dw = sum_rows(dwp).reshape(p.c, 1, p.k, p.k) if need_dw else None
    dgamma = sduz if need_dgamma else None
    dbeta = sdu if need_dbeta else None
    db = None
    if need_dbias:
        if training:  # BN with batch statistics is invariant to a per-channel shift of z
            db = torch.zeros(p.c, dtype=p.acc, device=x.device)
        else:
            gamma = bn_weight.to(p.acc) if bn_weight is not None else 1.0
            db = sdu * gamma * torch.rsqrt(var.to(p.acc) + eps)
    return dx, dw, dgamma, dbeta, db
