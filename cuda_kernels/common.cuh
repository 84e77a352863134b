/*
 * common.cuh -- small helpers shared by the pooling, batch-norm and dropout kernels.
 *
 * NVRTC has no standard headers and none of the C library's macros, so everything here is built from
 * CUDA builtins only: -inf is spelt through its bit pattern, NaN is detected as (v != v) (the kernels
 * are never compiled with fast-math, which would fold that to false).
 *
 * Indexing: every tensor has fewer than 2^31 elements (the launchers refuse larger ones and the
 * kernels re-check), so flat indices fit an int. Grid-stride loop counters are 64-bit all the same
 * (i + stride must not overflow), and index arithmetic is done in 32-bit unsigned ints: a 64-bit
 * integer division costs several times more GPU instructions than a 32-bit one, enough to make an
 * elementwise kernel compute-bound. Pooling also needs the padded extents H + 2*PH, W + 2*PW below
 * 2^31, so that window starts and ends fit an int. The limits per kernel are in docs/kernel_limits.md.
 *
 * Compiles with NVRTC and nvcc (-std=c++17) and with the CPU emulator's g++.
 */
#pragma once

namespace gpunet {

// -inf / +inf from their IEEE-754 bit patterns (sign 1 / 0, all-ones exponent, zero mantissa).
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000LL);
}

template <typename T> __device__ __forceinline__ bool is_nan(T v) { return v != v; }

// Grid-stride loop bounds: for (long long i = first_index(); i < n; i += grid_stride()).
__device__ __forceinline__ long long first_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_stride() { return (long long)blockDim.x * gridDim.x; }

// The largest int32 value: launchers keep per-plane sizes below it (see header).
constexpr long long INT32_MAX_LL = 2147483647LL;

// Pooling geometry as the launchers compute it (gpunet.ops.geometry.pool2d_geometry). Kernels check
// it again and do nothing when it is inconsistent, so a wrong launch cannot read or write out of
// bounds.
// The padded extents H + 2*PH and W + 2*PW must fit an int too: window starts and ends (o*S - P,
// o*S - P + K) then never overflow.
__device__ __forceinline__ bool pool_geometry_ok(int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                                 int PH, int PW, int OH, int OW) {
    if (N < 1 || C < 1 || H < 1 || W < 1 || KH < 1 || KW < 1 || SH < 1 || SW < 1) return false;
    if (PH < 0 || PW < 0 || 2LL * PH > KH || 2LL * PW > KW) return false;
    if (H + 2LL * PH > INT32_MAX_LL || W + 2LL * PW > INT32_MAX_LL) return false;
    if (H + 2 * PH < KH || W + 2 * PW < KW) return false;
    if (OH != (H + 2 * PH - KH) / SH + 1 || OW != (W + 2 * PW - KW) / SW + 1) return false;
    return (long long)N * C * H * W <= INT32_MAX_LL && (long long)N * C * OH * OW <= INT32_MAX_LL;
}

// The output rows [lo, hi] whose windows (start o*S - P, length K) cover input row i; empty when
// lo > hi. Used by the gather backwards. Needs i + P to fit an int (pool_geometry_ok).
__device__ __forceinline__ void covering_windows(int i, int K, int S, int P, int O, int& lo, int& hi) {
    int first = i + P - K + 1;                      // smallest window start covering i, plus P
    lo = first <= 0 ? 0 : (first - 1) / S + 1;      // ceil(first / S) for first > 0; first + S could overflow
    hi = (i + P) / S;                               // floor: i + P >= 0 always
    if (hi > O - 1) hi = O - 1;
}

}  // namespace gpunet
