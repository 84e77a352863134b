/*
 * conv2d_relu.cu -- fused conv2d + bias + ReLU, forward and backward, as tiled implicit GEMMs.
 *
 * LAYOUT (at the API, all C-contiguous, row-major):
 *   x  (N, C_in, H, W)        NCHW input
 *   w  (C_out, C_in, kh, kw)  weight (PyTorch layout)
 *   b  (C_out,)               bias (ignored when has_bias == 0; pass any 1-element buffer)
 *   y  (N, C_out, OH, OW)     output, y = relu?(conv(x, w) + b), zero padding
 *   wt (C_in, C_out, kh, kw)  the weight with its two channel axes swapped (made by the launcher for dx)
 * OH = (H + 2*ph - kh) / sh + 1, OW likewise (the launcher validates with gpunet.ops.geometry and the
 * kernels re-check the arithmetic themselves: a launch with inconsistent sizes writes nothing).
 *
 * INDEX FORMATS: every flat index is 32-bit (the launcher refuses tensors of 2^31 elements or more,
 * and every dimension of 2^28 or more; docs/kernel_limits.md). Flat offsets are row-major over the
 * shapes above, e.g. x[((n*C_in + c)*H + h)*W + w]. The offsets of a window's first tap (and the tap
 * offsets added to them) are formed in UNSIGNED 32-bit arithmetic: with padding or a kernel much larger
 * than the image, a window row far outside the image times W exceeds 2^31 even though the tensors are
 * small. Such rows are never read, and for the ones that are, the sum wraps back to the true offset
 * (< 2^31) -- well defined for unsigned ints, undefined behaviour (that compilers exploit) for int.
 * Inside a GEMM:  m = (n*OH + oh)*OW + ow  (output pixel),  k = (ci*kh + r)*kw + s  (weight tap).
 *
 * GEMM MAPPINGS (C[M][N] = sum_k A[m][k] * B[k][n]; A and B are never materialised):
 *   forward  M = N*OH*OW, N = C_out, K = C_in*kh*kw
 *            A[m][k] = x[n, ci, oh*sh - ph + r, ow*sw - pw + s] (0 outside), B[k][co] = w[co][k]
 *            epilogue: + b[co], ReLU, store y[n, co, oh, ow].
 *   dx       one GEMM per stride phase (rh, rw) = ((ih+ph) % sh, (iw+pw) % sw).
 *            Input pixels of one phase: ih = qh*sh + rh - ph; the taps that reach them are
 *            r = rh + u*sh (u < khp = ceil((kh - rh)/sh)), s = rw + v*sw, and oh = qh - u, ow = qw - v.
 *            M = N*nqh*nqw (the phase's pixels), N = C_in, K = C_out*khp*kwp.
 *            Only min(sh, H) x min(sw, W) phases hold pixels: phase (a, b) is rh = (ph + a) % sh,
 *            rw = (pw + b) % sw, and the phases are folded into gridDim.x (see LAUNCH GEOMETRY).
 *            A[m][(co,u,v)] = dy[n, co, qh-u, qw-v] masked by y > 0 (0 outside),
 *            B[(co,u,v)][ci] = wt[ci, co, r, s].  A gather: no atomics, no wasted stride-zero taps.
 *   dW       M = C_in*kh*kw, N = C_out, K = N*OH*OW (the long reduction, split in fixed chunks)
 *            A[(ci,r,s)][k] = x[n, ci, oh*sh-ph+r, ow*sw-pw+s], B[k][co] = dy[n, co, oh, ow] masked.
 *            Block (bx, by, z) reduces K-chunk z into part[z][co][m]; db partials come from the same
 *            B tiles (blocks with bx == 0) into dbpart[z][co]. conv2d_wgrad_reduce then sums the
 *            partials in the fixed order z = 0, 1, ..., S-1. No float atomics: bitwise deterministic.
 *
 * TILES: block tile BM x BN = 128 x 64, K step BK = 8, 256 threads (8 warps). Thread (tm, tn) =
 * (tid % 32, tid / 32) owns a TM x TN = 4 x 8 register tile: rows tm*4..tm*4+3, cols tn*8..tn*8+7.
 * A warp is a 128 x 8 strip: its A fragment is one 16-byte shared load per lane, its B fragment two
 * broadcast 16-byte loads, for 32 FMAs per k.
 * Global -> shared staging, per K step, per thread: A_PER_THREAD = 4 and B_PER_THREAD = 2 elements.
 *   "M-major" tiles (fwd/dx A: consecutive m are consecutive ow in memory): warp w loads k row w,
 *     lanes take rows lane + 32*i, so a warp reads 32 consecutive pixels.
 *   "K-major" tiles (weights; dW's A and B, whose k is the pixel index): lanes take k = tid % 8 and
 *     rows tid/8 + 32*i, so each row is read as 8 consecutive elements.
 * Double buffering: tile k+1 is read from global memory into registers while tile k is multiplied out
 * of shared memory, then stored to the other buffer; one __syncthreads per K step.
 *
 * SHARED MEMORY (static): 2 buffers x BK x (BM + SPAD) for A plus 2 x BK x (BN + SPAD) for B,
 *   = 2*8*132 + 2*8*68 = 3200 elements = 12.5 KiB (float) / 25 KiB (double). Under the 48 KiB static
 *   limit, so several blocks fit on one SM. SPAD = 4 keeps rows 16-byte aligned and sends the 8 k rows
 *   of a K-major store to 8 different bank groups.
 *
 * LAUNCH GEOMETRY (block = (256, 1, 1) always; kernels return at once for any other block shape):
 *   conv2d_fwd_*          grid (ceil(N*OH*OW / 128), ceil(C_out / 64), 1)
 *   conv2d_dgrad_*        grid (T * min(sh, H) * min(sw, W), ceil(C_in / 64), 1) with
 *                         T = ceil(N*ceil(H/sh)*ceil(W/sw) / 128) row tiles per phase: block x is
 *                         row tile x % T of phase x / T. (Phases on gridDim.z would hit its 65535
 *                         limit at stride 256x256; folded into x they stay under x.size / 16.)
 *   conv2d_wgrad_*        grid (ceil(C_in*kh*kw / 128), ceil(C_out / 64), S) with chunk*S >= N*OH*OW
 *   conv2d_wgrad_reduce_* any 1-D grid, block REDUCE_THREADS (a grid-stride loop over dW then db)
 * gridDim.y is at most 65535 on every GPU, so C_out (fwd, dW) and C_in (dx) are limited to
 * 65535 * 64 = 4194240; the launcher refuses more. Blocks past the end of a problem return before the
 * first barrier; every load and store is bounds checked, so a grid larger than needed is harmless.
 *
 * NUMERICS: ReLU is (v < 0 ? 0 : v): NaN propagates through the forward; the backward mask is y > 0,
 * so NaN or zero outputs pass no gradient. Each output element is summed by one thread in a fixed k
 * order, so results do not depend on thread scheduling. float32 results differ from a NumPy
 * reference only by summation order (and FMA contraction); float64 instantiations exist for
 * gradient checks. Entry points: conv2d_{fwd,dgrad,wgrad,wgrad_reduce}_{f32,f64}.
 *
 * Compiles with NVRTC (no standard headers) and nvcc -std=c++17.
 */

// ---------------------------------------------------------------- tile configuration
// The launcher (gpunet/cuda/conv2d.py) mirrors BM, BN, THREADS and REDUCE_THREADS.
constexpr int BM = 128;                        // block tile rows (GEMM M)
constexpr int BN = 64;                         // block tile columns (GEMM N)
constexpr int BK = 8;                          // reduction depth staged per shared buffer
constexpr int TM = 4;                          // rows per thread: one 16-byte float shared load
constexpr int TN = 8;                          // columns per thread: two 16-byte float shared loads
constexpr int WARP = 32;
constexpr int THREADS_M = BM / TM;             // 32: one warp spans all BM rows
constexpr int THREADS_N = BN / TN;             // 8: one warp per 8-column slice
constexpr int THREADS = THREADS_M * THREADS_N; // 256 threads per block
constexpr int SPAD = 4;                        // shared row padding, see header
constexpr int AS_LD = BM + SPAD;               // shared A row stride (elements)
constexpr int BS_LD = BN + SPAD;               // shared B row stride (elements)
constexpr int AS_STAGE = BK * AS_LD;           // elements of one A buffer
constexpr int BS_STAGE = BK * BS_LD;           // elements of one B buffer
constexpr int A_PER_THREAD = BM * BK / THREADS;  // 4 A elements staged per thread per K step
constexpr int B_PER_THREAD = BN * BK / THREADS;  // 2 B elements staged per thread per K step
constexpr int KMAJOR_ROWS = THREADS / BK;      // 32 rows covered per pass of a K-major load
constexpr int REDUCE_THREADS = 256;            // block size of conv2d_wgrad_reduce
// Any dimension at or above this is refused on the device. It keeps sums such as "row + tap" far
// from int overflow and makes OUTSIDE (below) fail every bounds test.
constexpr int DIM_LIMIT = 1 << 28;
constexpr int OUTSIDE = -(1 << 30);            // coordinate given to rows past the end of the GEMM
constexpr long long INT32_MAX_LL = 2147483647LL;

static_assert(THREADS / WARP == BK, "M-major loads: warp w stages k row w");
static_assert(A_PER_THREAD * WARP == BM, "M-major loads: 32 lanes x A_PER_THREAD rows cover BM");
static_assert(A_PER_THREAD * KMAJOR_ROWS == BM, "K-major A loads cover BM rows");
static_assert(B_PER_THREAD * KMAJOR_ROWS == BN, "K-major B loads cover BN rows");
static_assert(THREADS_M == WARP, "a warp is one column slice: B reads are broadcasts");

__device__ __forceinline__ bool inside(int i, int n) { return (unsigned)i < (unsigned)n; }

// Re-derive the output size: a launch whose sizes disagree with the convolution arithmetic is ignored.
__device__ __forceinline__ bool geometry_ok(int N, int C, int H, int W, int Cout, int kh, int kw,
                                            int sh, int sw, int ph, int pw, int OH, int OW) {
    if (N < 1 || C < 1 || H < 1 || W < 1 || Cout < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1) return false;
    if (ph < 0 || pw < 0) return false;
    if (N >= DIM_LIMIT || C >= DIM_LIMIT || H >= DIM_LIMIT || W >= DIM_LIMIT || Cout >= DIM_LIMIT) return false;
    if (kh >= DIM_LIMIT || kw >= DIM_LIMIT || sh >= DIM_LIMIT || sw >= DIM_LIMIT) return false;
    if (ph >= DIM_LIMIT || pw >= DIM_LIMIT) return false;
    if (H + 2 * ph < kh || W + 2 * pw < kw) return false;
    if (OH != (H + 2 * ph - kh) / sh + 1 || OW != (W + 2 * pw - kw) / sw + 1) return false;
    // 32-bit flat indices (INDEX FORMATS): x, y and w below 2^31 elements.
    return (long long)N * C * H * W <= INT32_MAX_LL && (long long)N * Cout * OH * OW <= INT32_MAX_LL &&
           (long long)Cout * C * kh * kw <= INT32_MAX_LL;
}

__device__ __forceinline__ bool block_shape_ok() {
    return blockDim.x == THREADS && blockDim.y == 1 && blockDim.z == 1;
}

// ---------------------------------------------------------------- the shared GEMM main loop
// Tile provides load(k0) (global -> registers for K step k0, zero outside) and store(As, Bs)
// (registers -> one shared buffer). acc[i][j] = C[m0 + tm*TM + i][n0 + tn*TN + j], summed over
// k in [0, ktiles*BK) in increasing k order. SUM_B: bsum[j] = the sum of B column j (db).
template <typename T, bool SUM_B, class Tile>
__device__ __forceinline__ void gemm_mainloop(Tile& tile, int ktiles, T* As, T* Bs,
                                              T (&acc)[TM][TN], T (&bsum)[TN], int tm, int tn) {
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        bsum[j] = T(0);
#pragma unroll
        for (int i = 0; i < TM; ++i) acc[i][j] = T(0);
    }
    if (ktiles <= 0) return;                   // block-uniform: K is a kernel argument
    tile.load(0);
    tile.store(As, Bs);
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < ktiles;
        if (more) tile.load((kt + 1) * BK);    // in flight while the FMAs below run
        const T* a = As + cur * AS_STAGE + tm * TM;
        const T* b = Bs + cur * BS_STAGE + tn * TN;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T af[TM], bf[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) af[i] = a[kk * AS_LD + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) bf[j] = b[kk * BS_LD + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += af[i] * bf[j];
            if (SUM_B) {
#pragma unroll
                for (int j = 0; j < TN; ++j) bsum[j] += bf[j];
            }
        }
        // The other buffer was last read in step kt-1, which ended with a barrier: safe to refill.
        if (more) tile.store(As + (cur ^ 1) * AS_STAGE, Bs + (cur ^ 1) * BS_STAGE);
        __syncthreads();
    }
}

// ---------------------------------------------------------------- staging: M-major A, K-major B
// The forward and dx tiles stage A with warp w on k row w, lanes on rows lane + 32*i, and B with
// lanes on k = tid % BK, rows tid/BK + 32*j. Their load() fills ra/rb; store() is this one.
template <typename T>
struct MajorMKStage {
    int a_k;                        // k row this thread stages in A (warp index)
    int a_row;                      // first A row this thread stages (lane)
    int b_k, b_row, b_n0;           // k column, first row, and the block's first column of B
    T ra[A_PER_THREAD], rb[B_PER_THREAD];

    __device__ void init_stage(int tid, int n0) {
        a_k = tid / WARP;
        a_row = tid % WARP;
        b_k = tid % BK;
        b_row = tid / BK;
        b_n0 = n0;
    }
    __device__ void store(T* As, T* Bs) {
#pragma unroll
        for (int i = 0; i < A_PER_THREAD; ++i) As[a_k * AS_LD + a_row + i * WARP] = ra[i];
#pragma unroll
        for (int j = 0; j < B_PER_THREAD; ++j) Bs[b_k * BS_LD + b_row + j * KMAJOR_ROWS] = rb[j];
    }
};

// ---------------------------------------------------------------- forward
// A = im2col(x) (M-major), B = w viewed as [C_out][K] (K-major).
template <typename T>
struct FwdTile : MajorMKStage<T> {
    using MajorMKStage<T>::a_k; using MajorMKStage<T>::b_k; using MajorMKStage<T>::b_row;
    using MajorMKStage<T>::b_n0; using MajorMKStage<T>::ra; using MajorMKStage<T>::rb;
    const T* __restrict__ x;
    const T* __restrict__ w;
    int K, KHW, kw, H, W, HW, Cout;
    unsigned a_base[A_PER_THREAD];  // x offset of (n, 0, ih0, iw0) mod 2^32 (see INDEX FORMATS)
    int a_ih0[A_PER_THREAD];        // oh*sh - ph, OUTSIDE past the last pixel
    int a_iw0[A_PER_THREAD];

    __device__ void load(int k0) {
        const int k = k0 + a_k;
        const bool kin = k < K;
        int r = 0, s = 0;
        unsigned koff = 0;
        if (kin) {
            const int ci = k / KHW;
            const int rs = k - ci * KHW;
            r = rs / kw;
            s = rs - r * kw;
            koff = (unsigned)(ci * HW) + (unsigned)r * (unsigned)W + (unsigned)s;
        }
#pragma unroll
        for (int i = 0; i < A_PER_THREAD; ++i) {
            T v = T(0);
            if (kin && inside(a_ih0[i] + r, H) && inside(a_iw0[i] + s, W)) v = x[a_base[i] + koff];
            ra[i] = v;
        }
        const int kb = k0 + b_k;
#pragma unroll
        for (int j = 0; j < B_PER_THREAD; ++j) {
            const int n = b_n0 + b_row + j * KMAJOR_ROWS;
            T v = T(0);
            if (kb < K && n < Cout) v = w[n * K + kb];
            rb[j] = v;
        }
    }
};

template <typename T>
__device__ __forceinline__ void conv2d_fwd_impl(
        const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
        int N, int C, int H, int W, int Cout, int kh, int kw, int sh, int sw, int ph, int pw,
        int OH, int OW, int has_bias, int relu, T* As, T* Bs) {
    if (!block_shape_ok() || !geometry_ok(N, C, H, W, Cout, kh, kw, sh, sw, ph, pw, OH, OW)) return;
    const int OHW = OH * OW;
    const int M = N * OHW;
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    if (m0 >= M || n0 >= Cout) return;        // block-uniform, before any barrier

    const int tid = threadIdx.x;
    FwdTile<T> t;
    t.x = x; t.w = w;
    t.KHW = kh * kw; t.K = C * t.KHW; t.kw = kw; t.H = H; t.W = W; t.HW = H * W; t.Cout = Cout;
    t.init_stage(tid, n0);
#pragma unroll
    for (int i = 0; i < A_PER_THREAD; ++i) {
        const int m = m0 + t.a_row + i * WARP;
        if (m < M) {
            const int n = m / OHW, p = m - n * OHW;
            const int oh = p / OW, ow = p - oh * OW;
            t.a_ih0[i] = oh * sh - ph;
            t.a_iw0[i] = ow * sw - pw;
            t.a_base[i] = (unsigned)(n * C * t.HW) + (unsigned)t.a_ih0[i] * (unsigned)W + (unsigned)t.a_iw0[i];
        } else {
            t.a_ih0[i] = OUTSIDE; t.a_iw0[i] = OUTSIDE; t.a_base[i] = 0;
        }
    }

    const int tm = tid % THREADS_M, tn = tid / THREADS_M;
    T acc[TM][TN], bsum[TN];
    gemm_mainloop<T, false>(t, (t.K + BK - 1) / BK, As, Bs, acc, bsum, tm, tn);

    // Epilogue: bias + ReLU, scatter to NCHW. Lane tm writes rows tm*4..tm*4+3 of column j.
    T bv[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int co = n0 + tn * TN + j;
        bv[j] = (has_bias && co < Cout) ? bias[co] : T(0);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + tm * TM + i;
        if (m >= M) continue;
        const int n = m / OHW, p = m - n * OHW;
        T* out = y + n * Cout * OHW + p;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int co = n0 + tn * TN + j;
            if (co >= Cout) continue;
            T v = acc[i][j] + bv[j];
            if (relu && v < T(0)) v = T(0);
            out[co * OHW] = v;
        }
    }
}

// ---------------------------------------------------------------- backward: dx
// A = masked dy gathered for the pixels of one stride phase (M-major), B = wt (K-major).
template <typename T>
struct DgradTile : MajorMKStage<T> {
    using MajorMKStage<T>::a_k; using MajorMKStage<T>::b_k; using MajorMKStage<T>::b_row;
    using MajorMKStage<T>::b_n0; using MajorMKStage<T>::ra; using MajorMKStage<T>::rb;
    const T* __restrict__ dy;
    const T* __restrict__ y;
    const T* __restrict__ wt;
    int relu;
    int K, taps, kwp, OH, OW, OHW;            // K = Cout * taps, taps = khp * kwp
    int rh, rw, sh, sw, kw, KHW, CoutKHW, Cin;
    unsigned a_base[A_PER_THREAD];            // dy offset of (n, 0, qh, qw) (unsigned: INDEX FORMATS)
    int a_qh[A_PER_THREAD];                   // OUTSIDE past the last pixel
    int a_qw[A_PER_THREAD];

    __device__ void load(int k0) {
        const int k = k0 + a_k;
        const bool kin = k < K;
        int u = 0, v = 0;
        unsigned koff = 0;                    // co*OHW - u*OW - v, mod 2^32
        if (kin) {
            const int co = k / taps;
            const int uv = k - co * taps;
            u = uv / kwp;
            v = uv - u * kwp;
            koff = (unsigned)(co * OHW) - (unsigned)u * (unsigned)OW - (unsigned)v;
        }
#pragma unroll
        for (int i = 0; i < A_PER_THREAD; ++i) {
            T g = T(0);
            if (kin && inside(a_qh[i] - u, OH) && inside(a_qw[i] - v, OW)) {
                const unsigned o = a_base[i] + koff;
                g = dy[o];
                if (relu && !(y[o] > T(0))) g = T(0);
            }
            ra[i] = g;
        }
        const int kb = k0 + b_k;
        int boff = 0;
        const bool kbin = kb < K;
        if (kbin) {
            const int co = kb / taps;
            const int uv = kb - co * taps;
            const int ub = uv / kwp;
            const int vb = uv - ub * kwp;
            boff = co * KHW + (rh + ub * sh) * kw + (rw + vb * sw);
        }
#pragma unroll
        for (int j = 0; j < B_PER_THREAD; ++j) {
            const int ci = b_n0 + b_row + j * KMAJOR_ROWS;
            T val = T(0);
            if (kbin && ci < Cin) val = wt[ci * CoutKHW + boff];
            rb[j] = val;
        }
    }
};

// Number of q >= 0 with 0 <= q*s + res - pad < size, and the first such q.
__device__ __forceinline__ void phase_range(int size, int s, int res, int pad, int& q0, int& nq) {
    q0 = pad > res ? (pad - res + s - 1) / s : 0;
    const int top = size - 1 + pad - res;     // q*s <= top
    nq = top < 0 ? 0 : top / s - q0 + 1;
    if (nq < 0) nq = 0;
}

template <typename T>
__device__ __forceinline__ void conv2d_dgrad_impl(
        const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ wt, T* __restrict__ dx,
        int N, int C, int H, int W, int Cout, int kh, int kw, int sh, int sw, int ph, int pw,
        int OH, int OW, int relu, T* As, T* Bs) {
    if (!block_shape_ok() || !geometry_ok(N, C, H, W, Cout, kh, kw, sh, sw, ph, pw, OH, OW)) return;
    // Block x = (phase, row tile), phase-major; see LAUNCH GEOMETRY. Phases that hold no pixel (when
    // the stride exceeds the image) are not launched: a runs over min(sh, H) row residues from ph.
    const int nph_h = sh < H ? sh : H, nph_w = sw < W ? sw : W;
    const int mmax = N * ((H - 1) / sh + 1) * ((W - 1) / sw + 1);   // the largest phase's M, <= N*H*W
    const int row_tiles = (mmax - 1) / BM + 1;
    const int phase = (int)(blockIdx.x / (unsigned)row_tiles);
    if (phase >= nph_h * nph_w) return;       // block-uniform, before any barrier
    const int rh = (ph + phase / nph_w) % sh, rw = (pw + phase % nph_w) % sw;
    int qh0, nqh, qw0, nqw;
    phase_range(H, sh, rh, ph, qh0, nqh);
    phase_range(W, sw, rw, pw, qw0, nqw);
    const int khp = kh > rh ? (kh - rh + sh - 1) / sh : 0;   // taps r = rh + u*sh < kh
    const int kwp = kw > rw ? (kw - rw + sw - 1) / sw : 0;
    const int nq = nqh * nqw;
    const int M = N * nq;
    const int m0 = ((int)blockIdx.x - phase * row_tiles) * BM;
    const int n0 = blockIdx.y * BN;
    if (m0 >= M || n0 >= C) return;

    const int tid = threadIdx.x;
    const int OHW = OH * OW;
    DgradTile<T> t;
    t.dy = dy; t.y = y; t.wt = wt; t.relu = relu;
    t.taps = khp * kwp; t.K = Cout * t.taps; t.kwp = kwp > 0 ? kwp : 1;
    t.OH = OH; t.OW = OW; t.OHW = OHW;
    t.rh = rh; t.rw = rw; t.sh = sh; t.sw = sw; t.kw = kw; t.KHW = kh * kw;
    t.CoutKHW = Cout * t.KHW; t.Cin = C;
    if (t.taps == 0) t.taps = 1;              // K == 0 then: never divided by, but keep it nonzero
    t.init_stage(tid, n0);
#pragma unroll
    for (int i = 0; i < A_PER_THREAD; ++i) {
        const int m = m0 + t.a_row + i * WARP;
        if (m < M) {
            const int n = m / nq, p = m - n * nq;
            const int qh = qh0 + p / nqw, qw = qw0 + p % nqw;
            t.a_qh[i] = qh; t.a_qw[i] = qw;
            t.a_base[i] = (unsigned)(n * Cout * OHW) + (unsigned)qh * (unsigned)OW + (unsigned)qw;
        } else {
            t.a_qh[i] = OUTSIDE; t.a_qw[i] = OUTSIDE; t.a_base[i] = 0;
        }
    }

    const int tm = tid % THREADS_M, tn = tid / THREADS_M;
    T acc[TM][TN], bsum[TN];
    gemm_mainloop<T, false>(t, (t.K + BK - 1) / BK, As, Bs, acc, bsum, tm, tn);

    const int HW = H * W;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + tm * TM + i;
        if (m >= M) continue;
        const int n = m / nq, p = m - n * nq;
        const int ih = (qh0 + p / nqw) * sh + rh - ph;
        const int iw = (qw0 + p % nqw) * sw + rw - pw;
        if (!inside(ih, H) || !inside(iw, W)) continue;  // cannot happen; never write outside
        T* out = dx + n * C * HW + ih * W + iw;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int ci = n0 + tn * TN + j;
            if (ci < C) out[ci * HW] = acc[i][j];
        }
    }
}

// ---------------------------------------------------------------- backward: dW and db
// A = im2col(x)^T, rows m = (ci, r, s), K-major; B = masked dy, K-major. Both stage k = k0 + tid % BK,
// so the pixel index k is decoded once per K step for both.
template <typename T>
struct WgradTile {
    const T* __restrict__ x;
    const T* __restrict__ dy;
    const T* __restrict__ y;
    int relu;
    int kbeg, kend;                           // this block's chunk of the pixel reduction
    int OHW, OW, sh, sw, ph, pw, H, W, CHW, CoutOHW;
    int k_l;                                  // tid % BK
    int row;                                  // tid / BK
    unsigned a_off[A_PER_THREAD];             // ci*H*W + r*W + s (unsigned: INDEX FORMATS)
    int a_r[A_PER_THREAD];                    // OUTSIDE past the last row
    int a_s[A_PER_THREAD];
    int b_off[B_PER_THREAD];                  // co*OH*OW, -1 past the last channel
    T ra[A_PER_THREAD], rb[B_PER_THREAD];

    __device__ void load(int k0) {
        const int k = kbeg + k0 + k_l;
        const bool kin = k < kend;
        int ih0 = 0, iw0 = 0, dbase = 0;
        unsigned xbase = 0;
        if (kin) {
            const int n = k / OHW, p = k - n * OHW;
            const int oh = p / OW, ow = p - oh * OW;
            ih0 = oh * sh - ph;
            iw0 = ow * sw - pw;
            xbase = (unsigned)(n * CHW) + (unsigned)ih0 * (unsigned)W + (unsigned)iw0;
            dbase = n * CoutOHW + p;
        }
#pragma unroll
        for (int i = 0; i < A_PER_THREAD; ++i) {
            T v = T(0);
            if (kin && inside(ih0 + a_r[i], H) && inside(iw0 + a_s[i], W)) v = x[xbase + a_off[i]];
            ra[i] = v;
        }
#pragma unroll
        for (int j = 0; j < B_PER_THREAD; ++j) {
            T g = T(0);
            if (kin && b_off[j] >= 0) {
                const int o = dbase + b_off[j];
                g = dy[o];
                if (relu && !(y[o] > T(0))) g = T(0);
            }
            rb[j] = g;
        }
    }
    __device__ void store(T* As, T* Bs) {
#pragma unroll
        for (int i = 0; i < A_PER_THREAD; ++i) As[k_l * AS_LD + row + i * KMAJOR_ROWS] = ra[i];
#pragma unroll
        for (int j = 0; j < B_PER_THREAD; ++j) Bs[k_l * BS_LD + row + j * KMAJOR_ROWS] = rb[j];
    }
};

template <typename T>
__device__ __forceinline__ void conv2d_wgrad_impl(
        const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ y,
        T* __restrict__ part, T* __restrict__ dbpart,
        int N, int C, int H, int W, int Cout, int kh, int kw, int sh, int sw, int ph, int pw,
        int OH, int OW, int relu, int has_bias, int splits, int chunk, T* As, T* Bs) {
    if (!block_shape_ok() || !geometry_ok(N, C, H, W, Cout, kh, kw, sh, sw, ph, pw, OH, OW)) return;
    const int OHW = OH * OW;
    const int Kred = N * OHW;
    // The chunks must tile the reduction exactly once: otherwise part[] would be incomplete.
    if (splits < 1 || chunk < 1 || (int)blockIdx.z >= splits) return;
    if ((long long)chunk * splits < Kred || (long long)chunk * (splits - 1) >= Kred) return;
    if ((long long)chunk * splits > INT32_MAX_LL) return;   // kbeg + chunk and k below must fit an int
    const int KHW = kh * kw;
    const int M = C * KHW;                    // rows: weight taps
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    if (m0 >= M || n0 >= Cout) return;

    const int tid = threadIdx.x;
    WgradTile<T> t;
    t.x = x; t.dy = dy; t.y = y; t.relu = relu;
    t.kbeg = blockIdx.z * chunk;
    t.kend = t.kbeg + chunk < Kred ? t.kbeg + chunk : Kred;
    t.OHW = OHW; t.OW = OW; t.sh = sh; t.sw = sw; t.ph = ph; t.pw = pw; t.H = H; t.W = W;
    t.CHW = C * H * W; t.CoutOHW = Cout * OHW;
    t.k_l = tid % BK;
    t.row = tid / BK;
#pragma unroll
    for (int i = 0; i < A_PER_THREAD; ++i) {
        const int m = m0 + t.row + i * KMAJOR_ROWS;
        if (m < M) {
            const int ci = m / KHW, rs = m - ci * KHW;
            const int r = rs / kw, s = rs - r * kw;
            t.a_off[i] = (unsigned)(ci * H * W) + (unsigned)r * (unsigned)W + (unsigned)s;
            t.a_r[i] = r; t.a_s[i] = s;
        } else {
            t.a_off[i] = 0; t.a_r[i] = OUTSIDE; t.a_s[i] = OUTSIDE;
        }
    }
#pragma unroll
    for (int j = 0; j < B_PER_THREAD; ++j) {
        const int co = n0 + t.row + j * KMAJOR_ROWS;
        t.b_off[j] = co < Cout ? co * OHW : -1;
    }

    const int tm = tid % THREADS_M, tn = tid / THREADS_M;
    T acc[TM][TN], bsum[TN];
    const int ktiles = (t.kend - t.kbeg + BK - 1) / BK;
    const bool want_db = has_bias && blockIdx.x == 0;   // one row of blocks owns db
    if (want_db) gemm_mainloop<T, true>(t, ktiles, As, Bs, acc, bsum, tm, tn);
    else gemm_mainloop<T, false>(t, ktiles, As, Bs, acc, bsum, tm, tn);

    // part[z][co][m] is dW's own layout (C_out, C_in*kh*kw) for split z.
    T* out = part + (long long)blockIdx.z * Cout * M;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int co = n0 + tn * TN + j;
        if (co >= Cout) continue;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int m = m0 + tm * TM + i;
            if (m < M) out[co * M + m] = acc[i][j];
        }
        if (want_db && tm == 0) dbpart[blockIdx.z * Cout + co] = bsum[j];
    }
}

// dw[i] = sum over z = 0..S-1 (in that order) of part[z][i]; likewise db from dbpart. Each output
// is summed by one thread, so the grid size does not change the result.
template <typename T>
__device__ __forceinline__ void conv2d_wgrad_reduce_impl(
        const T* __restrict__ part, const T* __restrict__ dbpart, T* __restrict__ dw, T* __restrict__ db,
        int splits, int total, int Cout, int has_bias) {
    if (splits < 1 || total < 1 || Cout < 1) return;
    if ((long long)splits * total > INT32_MAX_LL) return;   // dbpart's z * Cout (<= splits * total) is an int
    const long long outputs = (long long)total + (has_bias ? Cout : 0);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < outputs; idx += stride) {
        T s = T(0);
        if (idx < total) {
            for (int z = 0; z < splits; ++z) s += part[(long long)z * total + idx];
            dw[idx] = s;
        } else {
            const int co = (int)(idx - total);
            for (int z = 0; z < splits; ++z) s += dbpart[z * Cout + co];
            db[co] = s;
        }
    }
}

// ---------------------------------------------------------------- entry points (fixed names)
#define CONV_SHARED(T)                                   \
    __shared__ __align__(16) T As[2 * AS_STAGE];         \
    __shared__ __align__(16) T Bs[2 * BS_STAGE]

#define CONV_ENTRY_POINTS(T, SUF)                                                                     \
extern "C" __global__ void __launch_bounds__(THREADS) conv2d_fwd_##SUF(                               \
        const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, \
        int N, int C, int H, int W, int Cout, int kh, int kw, int sh, int sw, int ph, int pw,          \
        int OH, int OW, int has_bias, int relu) {                                                     \
    CONV_SHARED(T);                                                                                   \
    conv2d_fwd_impl<T>(x, w, b, y, N, C, H, W, Cout, kh, kw, sh, sw, ph, pw, OH, OW, has_bias, relu, \
                       As, Bs);                                                                       \
}                                                                                                     \
extern "C" __global__ void __launch_bounds__(THREADS) conv2d_dgrad_##SUF(                             \
        const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ wt,                  \
        T* __restrict__ dx, int N, int C, int H, int W, int Cout, int kh, int kw, int sh, int sw,      \
        int ph, int pw, int OH, int OW, int relu) {                                                   \
    CONV_SHARED(T);                                                                                   \
    conv2d_dgrad_impl<T>(dy, y, wt, dx, N, C, H, W, Cout, kh, kw, sh, sw, ph, pw, OH, OW, relu,       \
                         As, Bs);                                                                     \
}                                                                                                     \
extern "C" __global__ void __launch_bounds__(THREADS) conv2d_wgrad_##SUF(                             \
        const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ y,                   \
        T* __restrict__ part, T* __restrict__ dbpart, int N, int C, int H, int W, int Cout,           \
        int kh, int kw, int sh, int sw, int ph, int pw, int OH, int OW, int relu, int has_bias,       \
        int splits, int chunk) {                                                                      \
    CONV_SHARED(T);                                                                                   \
    conv2d_wgrad_impl<T>(x, dy, y, part, dbpart, N, C, H, W, Cout, kh, kw, sh, sw, ph, pw, OH, OW,    \
                         relu, has_bias, splits, chunk, As, Bs);                                      \
}                                                                                                     \
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) conv2d_wgrad_reduce_##SUF(               \
        const T* __restrict__ part, const T* __restrict__ dbpart, T* __restrict__ dw,                 \
        T* __restrict__ db, int splits, int total, int Cout, int has_bias) {                          \
    conv2d_wgrad_reduce_impl<T>(part, dbpart, dw, db, splits, total, Cout, has_bias);                 \
}

CONV_ENTRY_POINTS(float, f32)
CONV_ENTRY_POINTS(double, f64)
