"""Launcher for cuda_kernels/conv2d_relu.cu: fused conv2d + bias + ReLU, forward and backward.

    y, cache = conv2d_forward(ctx, x, w, b, win, relu)
    dx, dw, db = conv2d_backward(ctx, dy, cache)      # db is None when b was None

`ctx` is a `gpunet.cuda.loader.KernelContext` (CuPy or the CPU emulator); `win` the window the facade
(gpunet.cuda.ops, through gpunet.ops.checks.conv2d) validated. The launchers only refuse what the
kernels cannot index; the kernels re-check their bounds anyway.
The design (GEMM mappings, tiles, the deterministic dW reduction) is in docs/conv2d_kernel.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpunet.cuda.loader import GRID_YZ_MAX, INT32_MAX, ceil_div, check_grid, dtype_suffix, grid_1d, i32
from gpunet.ops.geometry import Window2d

SOURCE = "conv2d_relu.cu"

# Mirrors of the tile constants at the top of conv2d_relu.cu (grids are computed from them).
BM = 128             # GEMM rows per block
BN = 64              # GEMM columns per block
BK = 8               # K step; dW chunks are multiples of it so only the last chunk has a tail
THREADS = 256        # threads per GEMM block (the kernels refuse any other block shape)
REDUCE_THREADS = 256  # threads per block of conv2d_wgrad_reduce (a grid-stride loop)

# dW split-K policy. The split depends on the shape only (never on the GPU), so a given shape is
# reduced in the same order, bit for bit, on every device and every run.
WGRAD_TARGET_BLOCKS = 512  # about 2 waves at 2 blocks/SM on a 132-SM H100: enough to fill any GPU
WGRAD_MIN_CHUNK = 256      # pixels per split at least, so a split's work outweighs its partial's traffic

# Mirrors DIM_LIMIT in conv2d_relu.cu: every size, kernel, stride and padding must be below it (keeps
# sums such as "row + tap" far from int overflow); the kernels ignore a launch that breaks it.
DIM_LIMIT = 2**28
# Channel tiles of BN lie on grid.y (C_out for the forward and dW, C_in for dx), at most 65535 of them.
MAX_CHANNELS = GRID_YZ_MAX * BN   # 4194240


@dataclass(frozen=True)
class Conv2dCache:
    """What the backward needs: the (contiguous) inputs, the output when ReLU was fused (its mask)."""
    x: Any
    w: Any
    y: Any | None
    has_bias: bool
    win: Window2d

    @property
    def relu(self) -> bool:
        return self.y is not None


def _check_int32(what, *sizes):
    for s in sizes:
        if s > INT32_MAX:
            raise ValueError(f"{what}: tensors of {s} elements exceed the kernels' 32-bit indexing "
                             f"(at most {INT32_MAX})")


def _check_sizes(what, g: Window2d, cout: int):
    """The limits every conv2d kernel shares: each dimension below DIM_LIMIT, each tensor (x, w, y and
    their gradients) below 2^31 elements. docs/kernel_limits.md derives them."""
    dims = (("N", g.n), ("C_in", g.c), ("H", g.h), ("W", g.w), ("C_out", cout), ("kernel height", g.kh),
            ("kernel width", g.kw), ("stride height", g.sh), ("stride width", g.sw),
            ("padding height", g.ph), ("padding width", g.pw))
    for name, v in dims:
        if v >= DIM_LIMIT:
            raise ValueError(f"{what}: {name} = {v} is not below the kernels' limit {DIM_LIMIT} (2^28) "
                             "on every size, stride and padding")
    _check_int32(what, g.n * g.c * g.h * g.w, cout * g.c * g.kh * g.kw, g.n * cout * g.oh * g.ow)


def _channel_hint(name: str, channels: int) -> str:
    return f"{name} = {channels} must be at most {MAX_CHANNELS} (tiles of {BN} channels on grid.y)"


def forward_grid(g: Window2d, cout: int) -> tuple[int, int, int]:
    """The forward's grid for a validated window and C_out; ValueError beyond the kernels' limits."""
    _check_sizes("conv2d", g, cout)
    return check_grid("conv2d", (ceil_div(g.n * g.oh * g.ow, BM), ceil_div(cout, BN), 1),
                      _channel_hint("C_out", cout))


@dataclass(frozen=True)
class BackwardGeometry:
    """Launch geometry of the backward: dx grid (stride phases folded into x), dW grid and split."""
    dgrad_grid: tuple[int, int, int]
    wgrad_grid: tuple[int, int, int]
    splits: int
    chunk: int


def backward_geometry(g: Window2d, cout: int) -> BackwardGeometry:
    """Grids and dW split of the backward, from shapes only (no allocation, so testable at any size);
    ValueError beyond the kernels' limits."""
    what = "conv2d backward"
    _check_sizes(what, g, cout)
    # dx: only min(s, size) stride phases per axis hold pixels (all s of them once size >= s); block x
    # is (phase, row tile), phase-major, row tiles sized for the largest phase (conv2d_relu.cu).
    phases = min(g.sh, g.h) * min(g.sw, g.w)
    row_tiles = ceil_div(g.n * ceil_div(g.h, g.sh) * ceil_div(g.w, g.sw), BM)
    dgrad = check_grid(f"{what} (dx)", (row_tiles * phases, ceil_div(g.c, BN), 1), _channel_hint("C_in", g.c))
    kf, kred = g.c * g.kh * g.kw, g.n * g.oh * g.ow
    tiles = ceil_div(kf, BM) * ceil_div(cout, BN)
    splits, chunk = wgrad_split(kred, tiles)
    if splits * chunk > INT32_MAX:
        raise ValueError(f"{what}: the weight gradient sums over N*OH*OW = {kred} pixels in {splits} chunks of "
                         f"{chunk} (whole K steps of {BK}), {splits * chunk} in all, beyond the kernels' 32-bit "
                         f"indexing (at most {INT32_MAX})")
    _check_int32(what, splits * cout * kf)
    wgrad = check_grid(f"{what} (dW)", (ceil_div(kf, BM), ceil_div(cout, BN), splits), _channel_hint("C_out", cout))
    return BackwardGeometry(dgrad, wgrad, splits, chunk)


def _unused_arg(xp, dtype):
    """A 1-element array for a pointer the kernel never touches (no bias, no ReLU mask). Never an alias of another
    argument: the emulator's check mode gives every argument its own copy and copies each back."""
    return xp.zeros(1, dtype=dtype)


def _geometry_args(g: Window2d, cout: int):
    return tuple(i32(v) for v in (g.n, g.c, g.h, g.w, cout, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.oh, g.ow))


def wgrad_split(kred: int, tiles: int) -> tuple[int, int]:
    """(splits, chunk): the pixel reduction of dW cut into `splits` chunks of `chunk` pixels (a
    multiple of BK), the last one possibly shorter, none empty."""
    want = max(1, min(ceil_div(WGRAD_TARGET_BLOCKS, tiles), kred // WGRAD_MIN_CHUNK))
    chunk = ceil_div(ceil_div(kred, want), BK) * BK
    return ceil_div(kred, chunk), chunk


def conv2d_forward(ctx, x, w, b, g: Window2d, relu: bool):
    """y = relu?(conv(x, w) + b) in one kernel launch. Returns (y, cache)."""
    suf = dtype_suffix(x.dtype)
    cout = int(w.shape[0])
    grid = forward_grid(g, cout)
    xp = ctx.xp
    x = xp.ascontiguousarray(x)
    w = xp.ascontiguousarray(w)
    b = None if b is None else xp.ascontiguousarray(b)
    y = xp.empty((g.n, cout, g.oh, g.ow), dtype=x.dtype)
    bias = _unused_arg(xp, x.dtype) if b is None else b
    ctx.kernel(SOURCE, f"conv2d_fwd_{suf}")(
        grid, (THREADS, 1, 1),
        (x, w, bias, y, *_geometry_args(g, cout), i32(b is not None), i32(bool(relu))))
    return y, Conv2dCache(x=x, w=w, y=y if relu else None, has_bias=b is not None, win=g)


def conv2d_backward(ctx, dy, cache: Conv2dCache, input_grad: bool = True):
    """(dx, dw, db) of the forward that made `cache`; dy is masked by y > 0 inside the kernels.
    input_grad=False launches no dgrad kernel and returns dx None."""
    g, x, w = cache.win, cache.x, cache.w
    cout = int(w.shape[0])
    suf = dtype_suffix(dy.dtype)
    geom = backward_geometry(g, cout)
    xp = ctx.xp
    dy = xp.ascontiguousarray(dy)
    mask = cache.y if cache.relu else _unused_arg(xp, dy.dtype)
    relu = i32(cache.relu)
    geo = _geometry_args(g, cout)

    # dx: one implicit GEMM per stride phase, gathering from dy (no atomics); the phases are folded
    # into grid.x.
    dx = None
    if input_grad:
        wt = xp.ascontiguousarray(w.transpose(1, 0, 2, 3))     # (C_in, C_out, kh, kw): K-contiguous B rows
        dx = xp.empty(x.shape, dtype=x.dtype)
        ctx.kernel(SOURCE, f"conv2d_dgrad_{suf}")(
            geom.dgrad_grid, (THREADS, 1, 1),
            (dy, mask, wt, dx, *geo, relu))

    # dW (and db): split-K partials in a workspace, then a fixed-order sum. With one split the
    # GEMM writes dw and db directly.
    kf, splits, chunk = g.c * g.kh * g.kw, geom.splits, geom.chunk
    dw = xp.empty(w.shape, dtype=w.dtype)
    db = xp.empty((cout,), dtype=w.dtype) if cache.has_bias else None
    db_out = db if cache.has_bias else _unused_arg(xp, w.dtype)
    if splits == 1:
        part, dbpart = dw, db_out
    else:
        part = xp.empty((splits, cout, kf), dtype=w.dtype)
        dbpart = xp.empty((splits, cout), dtype=w.dtype) if cache.has_bias else _unused_arg(xp, w.dtype)
    ctx.kernel(SOURCE, f"conv2d_wgrad_{suf}")(
        geom.wgrad_grid, (THREADS, 1, 1),
        (x, dy, mask, part, dbpart, *geo, relu, i32(cache.has_bias), i32(splits), i32(chunk)))
    if splits > 1:
        outputs = cout * kf + (cout if cache.has_bias else 0)
        ctx.kernel(SOURCE, f"conv2d_wgrad_reduce_{suf}")(
            *grid_1d(outputs, REDUCE_THREADS),
            (part, dbpart, dw, db_out, i32(splits), i32(cout * kf), i32(cout), i32(cache.has_bias)))
    return dx, dw, db
