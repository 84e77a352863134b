"""Image-major im2col: one GEMM per image, results straight in NCHW order, no transposing copy.

Each image's im2col matrix (K, P) stands alone, so W @ cols[n] lands in y[n] as it lies, and dW is a
batch of per-image GEMMs g[n] (C_out, P) @ cols[n]^T on the masked dy as it lies. For a pointwise
convolution (1x1, stride 1, no padding) x[n] is its own im2col matrix and dx = W^T @ g[n] per image,
so no copy is left at all; other geometries get no dx here (the table sends those to im2col).
Thin inputs' GEMMs are too small for OpenBLAS to thread, so blocks of images are shared between
threads instead; dW and db are summed block by block in block order (the same bits for any thread
count).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gpunet.arrays import all_finite, relu_into
from gpunet.ops.geometry import Window2d
from gpunet.ops.numpy.conv._common import padded_block, pointwise, relu_masked
from gpunet.ops.numpy.util import even_blocks, parallel, workspace

# Bytes of im2col per block: small, so that both threads get several (benchmarks/README.md). A fixed
# size, so the block-ordered dW sums do not depend on the thread count.
IMAGE_BLOCK_BYTES = 1 << 20
# Pointwise blocks: no im2col copy to keep in cache, BLAS threads each GEMM itself.
POINTWISE_BLOCK_BYTES = 4 << 20


def applies(win: Window2d, cout: int, want_dx, dtype) -> bool:
    """Any forward and any dx-free backward; a backward with dx only when pointwise."""
    return not want_dx or pointwise(win)


def _cols(x, win: Window2d, n0: int, n1: int):
    """im2col of images n0:n1 image-major, (nb, K, P) (x itself when pointwise)."""
    nb = n1 - n0
    if pointwise(win):
        return x[n0:n1].reshape(nb, win.c, win.h * win.w)
    src = padded_block(x, win, n0, n1)
    cols = workspace().get("conv_cols", (nb, win.c, win.kh, win.kw, win.oh, win.ow), x.dtype)
    s_n, s_c, s_h, s_w = src.strides
    np.copyto(cols, as_strided(src, cols.shape, (s_n, s_c, s_h, s_w, s_h * win.sh, s_w * win.sw),
                                writeable=False))
    return cols.reshape(nb, win.c * win.kh * win.kw, win.oh * win.ow)


def _image_blocks(win: Window2d, bytes_per_image: int):
    budget = POINTWISE_BLOCK_BYTES if pointwise(win) else IMAGE_BLOCK_BYTES
    return even_blocks(win.n, budget // max(1, bytes_per_image))


def _run(fn, blocks, win: Window2d, size: int) -> None:
    """fn(n0, n1) for each block of images, the blocks shared between threads (pointwise GEMMs are
    large enough for BLAS's own threads)."""
    def run(i0, i1):
        for n0, n1 in blocks[i0:i1]:
            fn(n0, n1)
    if pointwise(win) or len(blocks) == 1:
        run(0, len(blocks))
    else:
        parallel(run, len(blocks), size)


def forward(x, w, b, win: Window2d, relu: bool, y) -> None:
    cout, dt = int(w.shape[0]), y.dtype
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    wm = np.ascontiguousarray(w).reshape(cout, k)
    bias = None if b is None else b.reshape(cout, 1)
    y3 = y.reshape(win.n, cout, p)

    def block(n0, n1):
        yb = y3[n0:n1]
        np.matmul(wm, _cols(x, win, n0, n1), out=yb)
        if bias is not None:
            np.add(yb, bias, out=yb)
        if relu:
            relu_into(yb, yb)
    _run(block, _image_blocks(win, k * p * dt.itemsize), win, y.size)


def backward(dy, ctx, want_dx: bool):
    x, w, win = ctx.x, ctx.w, ctx.win
    dt = dy.dtype
    cout = int(w.shape[0])
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    wm = np.ascontiguousarray(w).reshape(cout, k)
    dy3 = dy.reshape(win.n, cout, p)
    y3 = None if ctx.y is None else ctx.y.reshape(win.n, cout, p)
    dx = np.empty(x.shape, dtype=dt) if want_dx else None
    finite = y3 is None or all_finite(dy3)
    blocks = _image_blocks(win, k * p * dt.itemsize)
    parts = {}   # per block: (dW, db) partial sums, added in block order below

    def block(n0, n1):
        g = workspace().get("conv_g", (n1 - n0, cout, p), dt)
        relu_masked(dy3[n0:n1], None if y3 is None else y3[n0:n1], g, finite)
        # row sums by einsum: 3x faster than g.sum(axis=2)
        db = np.einsum("ncp->nc", g).sum(axis=0, dtype=np.float64) if ctx.has_bias else None
        dw = np.matmul(g, _cols(x, win, n0, n1).transpose(0, 2, 1)).sum(axis=0)
        if dx is not None:
            np.matmul(wm.T, g, out=dx[n0:n1].reshape(n1 - n0, win.c, p))
        parts[n0] = (dw, db)
    _run(block, blocks, win, dy3.size)
    dw, db = parts[blocks[0][0]]
    for n0, _ in blocks[1:]:
        dw += parts[n0][0]
        if ctx.has_bias:
            db += parts[n0][1]
    return dx, dw.reshape(w.shape), (None if db is None else db.astype(dt))
