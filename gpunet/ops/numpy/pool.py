"""Max and average pooling on NumPy: one whole-tensor operation per kernel tap, on contiguous data.

MAX POOL SEMANTICS (what a CUDA kernel must reproduce bit for bit):
  * A window's value is the maximum over its REAL inputs; padding (-inf) never wins.
  * argmax is int32, the flat index h*W + w of the chosen input inside its (n, c) plane.
  * Scanning the window in row-major order (i outer, j inner) from its first real input, a value
    replaces the current maximum only when strictly greater: ties go to the FIRST maximum.
  * NaN propagates: a window with any NaN outputs NaN and its argmax is the FIRST NaN in row-major
    order (PyTorch's CPU kernel points at the last NaN; we do not).
  * A window whose real inputs are all -inf outputs -inf, argmax at its first real input.
  * (The one freedom: when +0 and -0 tie for the maximum, the output may carry either sign; argmax
    is the first of them.)
  Backward: dx = +0 everywhere, then each window's dy is added at its argmax, windows taken in
  row-major output order (oh outer, ow inner). With finite dy this equals a gather kernel that walks,
  for each input pixel, the windows covering it in row-major order: the same additions in the same
  order, so overlapping windows give bitwise identical sums.
AVG POOL (count_include_pad=True): y = (sum of the window's real inputs in row-major order, from +0)
/ (kh*kw); dx = (sum of dy over the covering windows in row-major output order, from +0) / (kh*kw).
One correctly rounded division each, no reciprocal multiply.

HOW. x is split into its sh*sw stride phases (rows = a mod sh, columns = b mod sw), each copied once
into a buffer padded with the fill value (-inf for max, 0 for avg) and laid out with a common row
pitch Q. In a phase, every tap (i, j) of every window is then the same flat plane shifted by one
offset, so each tap is ONE contiguous 1-D operation over all (n, c) planes at once, on a "wide" output
grid with the phases' row pitch Q and plane pitch R*Q whose extra rows and columns are computed and
thrown away (NumPy's fast loops need 1-D contiguous operands: strided 2-D slices run ~7x slower). Loops run over taps only; the batch
is split between threads (NumPy releases the GIL in these loops).
  max, pass 1: y = running np.maximum over the taps (NaN-propagating).
  max, pass 2: idx = number of leading taps, in row-major order, that do not hit (hit: value == y, or
    both NaN), counted with boolean "not found yet" masks; argmax = window origin + i*W + j of tap idx.
    Padding can only tie when y = -inf; those windows are then pointed at their first real input.
  backward: dx = +0, then dy is scattered to the global argmax positions (plane offset + argmax).
    Windows that do not overlap (kernel <= stride along both axes) reach each input pixel at most
    once: one fancy-index assignment of dy + 0 (+0 + -0 = +0, as the sum rule says). Overlapping
    windows: np.add.at, which adds its updates one after another in index-array order; that array is
    laid out in row-major output order per plane, so every pixel's sum is taken in exactly the order
    the sum rule names, for any dy (inf and NaN included). It replaced per-tap masked passes over a
    phase accumulator (benchmarks/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpunet.ops.geometry import Window2d
from gpunet.ops.numpy.util import parallel, workspace

# Max-pool backward scatters plane chunks of about this many dx bytes at a time, so the chunk's dx, its
# flat indices and its values stay in cache from zeroing to scatter (benchmarks/README.md, "NumPy ops").
SCATTER_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class _Layout:
    win: Window2d
    top: int            # rows of fill above a phase's data (room for taps reaching before row 0)
    left: int
    rows: int           # R: rows of a padded phase plane
    pitch: int          # Q: row pitch of the padded phase planes and of the wide output grid
    length: int         # L: span of the wide output grid, (OH - 1)*Q + OW
    taps: tuple         # per tap in row-major order: (phase index, flat offset in the phase plane)

    @property
    def compact(self) -> bool:
        """The wide grid is the output itself (no padding, windows tile the phases exactly)."""
        return self.rows == self.win.oh and self.pitch == self.win.ow

    @property
    def plane(self) -> int:
        return self.rows * self.pitch

    @property
    def phases(self):
        return [(a, b) for a in range(self.win.sh) for b in range(self.win.sw)]


def _layout(win: Window2d) -> _Layout:
    di = [(i - win.ph) // win.sh for i in range(win.kh)]
    dj = [(j - win.pw) // win.sw for j in range(win.kw)]
    top, left = max(0, -min(di)), max(0, -min(dj))
    ha = -(-win.h // win.sh)    # rows of the largest phase
    wb = -(-win.w // win.sw)
    rows = max(top + ha, top + win.oh + max(di))
    pitch = max(left + wb, left + win.ow + max(dj))
    taps = []
    for i in range(win.kh):
        for j in range(win.kw):
            phase = ((i - win.ph) % win.sh) * win.sw + (j - win.pw) % win.sw
            taps.append((phase, (top + di[i]) * pitch + left + dj[j]))
    return _Layout(win, top, left, rows, pitch, (win.oh - 1) * pitch + win.ow, tuple(taps))


def _phase_views(lay: _Layout, buf, nb: int):
    """[(phase buffer region holding real data, matching x[:, :, a::sh, b::sw] slicing)] per phase."""
    win = lay.win
    planes = buf.reshape(len(lay.phases), nb, win.c, lay.rows, lay.pitch)
    out = []
    for k, (a, b) in enumerate(lay.phases):
        ha, wb = len(range(a, win.h, win.sh)), len(range(b, win.w, win.sw))
        out.append((planes[k, :, :, lay.top:lay.top + ha, lay.left:lay.left + wb],
                    (slice(None), slice(None), slice(a, None, win.sh), slice(b, None, win.sw))))
    return out


def _load_phases(lay: _Layout, x, fill, name: str):
    """The padded phase planes of x (nb images), flat: (phases, nb*C*R*Q), from the workspace."""
    nb, win = x.shape[0], lay.win
    buf = workspace().get(name, (len(lay.phases), nb * win.c * lay.plane), x.dtype)
    views = _phase_views(lay, buf, nb)
    if any(region.shape[-2:] != (lay.rows, lay.pitch) for region, _ in views):
        buf.fill(fill)
    # else the data covers every plane (2x2/s2 on even sizes) and the fill, as costly as a copy, is skipped
    for region, sl in views:
        np.copyto(region, x[sl])
    return buf


def _wide(lay: _Layout, buf, nb: int):
    """The (nb, C, OH, OW) outputs inside a flat wide grid of nb*C planes of R*Q."""
    win = lay.win
    return buf[:nb * win.c * lay.plane].reshape(nb, win.c, lay.rows, lay.pitch)[:, :, :win.oh, :win.ow]


def _span(lay: _Layout, nb: int) -> int:
    """Elements of the flat wide grid that hold outputs: up to the last plane's last output."""
    return (nb * lay.win.c - 1) * lay.plane + lay.length


def _origin(win: Window2d) -> np.ndarray:
    """(OH, OW) int32: flat index h0*W + w0 of each window's top-left tap (possibly in padding)."""
    h0 = np.arange(win.oh, dtype=np.int32) * win.sh - win.ph
    w0 = np.arange(win.ow, dtype=np.int32) * win.sw - win.pw
    return h0[:, None] * np.int32(win.w) + w0[None, :]


def _first_real(win: Window2d) -> np.ndarray:
    """(OH, OW) int32: flat index of each window's first real input in row-major order."""
    h0 = np.maximum(np.arange(win.oh, dtype=np.int32) * win.sh - win.ph, 0)
    w0 = np.maximum(np.arange(win.ow, dtype=np.int32) * win.sw - win.pw, 0)
    return h0[:, None] * np.int32(win.w) + w0[None, :]


# --- max pooling ----------------------------------------------------------------------------------

def max_pool2d_forward(x, win: Window2d):
    dt = x.dtype
    lay = _layout(win)
    y = np.empty((win.n, win.c, win.oh, win.ow), dtype=dt)
    argmax = np.empty(y.shape, dtype=np.int32)
    parallel(lambda n0, n1: _max_fwd(lay, x[n0:n1], y[n0:n1], argmax[n0:n1]), win.n, x.size)
    return y, argmax


def _max_fwd(lay: _Layout, x, y, argmax):
    win, nb = lay.win, x.shape[0]
    ws = workspace()
    ph = _load_phases(lay, x, -np.inf, "pool_phases")
    n = _span(lay, nb)
    size = nb * win.c * lay.plane
    yw = y.reshape(-1) if lay.compact else ws.get("pool_wide", (size,), x.dtype)
    yl = yw[:n]
    tap = [ph[p, o:o + n] for p, o in lay.taps]
    np.copyto(yl, tap[0])
    for v in tap[1:]:
        np.maximum(yl, v, out=yl)
    if not lay.compact:
        np.copyto(y, _wide(lay, yw, nb))

    # Pass 2: idx = leading taps that miss; rows = how many of them end a kernel row (for i*W + j).
    nan = not np.isfinite(y.sum()) and bool(np.isnan(y).any())
    miss = ws.get("pool_miss", (n,), np.bool_)
    notyet = ws.get("pool_notyet", (n,), np.bool_)
    idx = ws.get("pool_idx", (size,), np.uint8)
    rows = ws.get("pool_rows", (size,), np.uint8)
    idx[:n].fill(0)
    rows[:n].fill(0)
    for t, v in enumerate(tap[:-1]):
        np.not_equal(v, yl, out=miss)
        if nan:  # a NaN tap hits a NaN maximum
            miss &= np.equal(v, v)
        if t == 0:
            np.copyto(notyet, miss)
        else:
            np.logical_and(notyet, miss, out=notyet)
        np.add(idx[:n], notyet, out=idx[:n])
        if (t + 1) % win.kw == 0:  # the next tap starts a new kernel row
            np.add(rows[:n], notyet, out=rows[:n])
    # argmax = origin + i*W + j, with i*W + j = idx + rows*(W - kw). Arithmetic runs on flat
    # contiguous arrays; copyto does the strided extraction (and the uint8 -> int32 cast).
    np.copyto(argmax, _wide(lay, idx, nb))
    flat = argmax.reshape(-1, win.oh * win.ow)
    if win.kh > 1 and win.w != win.kw:
        r32 = ws.get("pool_rows32", argmax.shape, np.int32)
        np.copyto(r32, _wide(lay, rows, nb))
        np.multiply(r32, np.int32(win.w - win.kw), out=r32)
        np.add(argmax, r32, out=argmax)
    np.add(flat, _origin(win).reshape(-1), out=flat)
    if (win.ph or win.pw) and y.min() == -np.inf:  # padding tied with an all -inf window
        np.copyto(argmax, np.broadcast_to(_first_real(win), argmax.shape), where=y == -np.inf)


def max_pool2d_backward(dy, argmax, win: Window2d):
    dt = dy.dtype
    dx = np.empty(win.in_shape, dtype=dt)
    overlap = win.kh > win.sh or win.kw > win.sw
    parallel(lambda n0, n1: _max_bwd_scatter(win, dy[n0:n1], argmax[n0:n1], dx[n0:n1], overlap), win.n, dx.size)
    return dx


def _max_bwd_scatter(win: Window2d, dy, argmax, dx, overlap: bool):
    """dx of nb images: +0, plus each window's dy at its argmax (in row-major output order), chunk by
    chunk of planes."""
    planes, plane, outs = dy.shape[0] * win.c, win.h * win.w, win.oh * win.ow
    step = max(1, min(planes, SCATTER_CHUNK_BYTES // max(1, plane * dx.dtype.itemsize)))
    am2, dy2, dx2 = argmax.reshape(planes, outs), dy.reshape(planes, outs), dx.reshape(planes, plane)
    idx = workspace().get("pool_gidx", (step, outs), np.intp)
    val = workspace().get("pool_gval", (step, outs), dy.dtype)
    local = (np.arange(step, dtype=np.intp) * plane)[:, None]   # a chunk's planes in its dx rows
    for p0 in range(0, planes, step):
        n = min(step, planes - p0)
        d = dx2[p0:p0 + n]
        d.fill(0)
        np.add(am2[p0:p0 + n], local[:n], out=idx[:n])              # flat index into the chunk's dx
        if overlap:   # dx starts at +0 and takes every sum in order, as the CUDA gather does
            np.add.at(d.reshape(-1), idx[:n].reshape(-1), dy2[p0:p0 + n].reshape(-1))
        else:
            np.add(dy2[p0:p0 + n], dy.dtype.type(0), out=val[:n])   # -0 becomes +0, as 0 + dy does
            d.reshape(-1)[idx[:n].reshape(-1)] = val[:n].reshape(-1)


def _wide_dy(lay: _Layout, dy):
    """dy on the flat wide grid, zero in the filler."""
    nb, win = dy.shape[0], lay.win
    if lay.compact and dy.flags.c_contiguous:
        return dy.reshape(-1)
    g = workspace().get("pool_dy", (nb * win.c * lay.plane,), dy.dtype)
    g.fill(0)
    np.copyto(_wide(lay, g, nb), dy)
    return g


# --- average pooling ------------------------------------------------------------------------------

def avg_pool2d_forward(x, win: Window2d):
    dt = x.dtype
    lay = _layout(win)
    y = np.empty((win.n, win.c, win.oh, win.ow), dtype=dt)
    parallel(lambda n0, n1: _avg_fwd(lay, x[n0:n1], y[n0:n1]), win.n, x.size)
    return y


def _avg_fwd(lay: _Layout, x, y):
    win, nb = lay.win, x.shape[0]
    ph = _load_phases(lay, x, 0, "pool_phases")
    n = _span(lay, nb)
    yw = y.reshape(-1) if lay.compact else workspace().get("pool_wide", (nb * win.c * lay.plane,), x.dtype)
    yl = yw[:n]
    yl.fill(0)
    for p, o in lay.taps:  # padding adds +0: no change to a sum that starts at +0
        np.add(yl, ph[p, o:o + n], out=yl)
    if lay.compact:
        np.divide(yl, x.dtype.type(win.kh * win.kw), out=yl)
    else:
        np.divide(_wide(lay, yw, nb), x.dtype.type(win.kh * win.kw), out=y)


def avg_pool2d_backward(dy, win: Window2d):
    dt = dy.dtype
    lay = _layout(win)
    dx = np.empty(win.in_shape, dtype=dt)
    parallel(lambda n0, n1: _avg_bwd(lay, dy[n0:n1], dx[n0:n1]), win.n, dx.size)
    return dx


def _avg_bwd(lay: _Layout, dy, dx):
    win, nb = lay.win, dy.shape[0]
    n = _span(lay, nb)
    g = _wide_dy(lay, dy)[:n]
    acc = workspace().get("pool_acc", (len(lay.phases), nb * win.c * lay.plane), dy.dtype)
    acc.fill(0)
    for p, o in reversed(lay.taps):
        dst = acc[p, o:o + n]
        np.add(dst, g, out=dst)
    div = dy.dtype.type(win.kh * win.kw)
    for region, sl in _phase_views(lay, acc, nb):
        np.divide(region, div, out=dx[sl])
