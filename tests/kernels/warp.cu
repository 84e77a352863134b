// Warp collectives: shuffles (all four, with widths), votes, reductions, partial warps.
#include "emu_helpers.cuh"

// For every thread: the four shuffles of v = x[i], each with its own width, as in the CUDA docs.
extern "C" __global__ void shuffles(const float* x, float* out_idx, float* out_up, float* out_down, float* out_xor,
                                    int src, int delta, int width) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = x[i];
    out_idx[i] = __shfl_sync(0xffffffffu, v, src, width);
    out_up[i] = __shfl_up_sync(0xffffffffu, v, delta, width);
    out_down[i] = __shfl_down_sync(0xffffffffu, v, delta, width);
    out_xor[i] = __shfl_xor_sync(0xffffffffu, v, delta, width);
}

// Per-warp sum by butterfly (every lane gets it) and by shfl_down (lane 0 gets it), in double.
extern "C" __global__ void warp_sums(const double* x, double* butterfly, double* down) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    double v = x[i], w = x[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    for (int o = 16; o > 0; o >>= 1) w += __shfl_down_sync(0xffffffffu, w, o);
    butterfly[i] = v;
    if (threadIdx.x % 32 == 0) down[i / 32] = w;
}

// Inclusive prefix sum within each warp with shfl_up.
extern "C" __global__ void warp_scan(const int* x, int* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    int v = x[i];
    for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    out[i] = v;
}

// Votes: ballot / any / all of x > 0, per warp; plus __reduce_add_sync and __match_any_sync.
extern "C" __global__ void votes(const int* x, unsigned int* ballot, int* any, int* all, int* radd,
                                 unsigned int* match) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = x[i] > 0;
    const unsigned int b = __ballot_sync(0xffffffffu, p);
    const int a = __any_sync(0xffffffffu, p);
    const int l = __all_sync(0xffffffffu, p);
    const int r = __reduce_add_sync(0xffffffffu, x[i]);
    const unsigned int m = __match_any_sync(0xffffffffu, x[i] & 3);
    ballot[i] = b; any[i] = a; all[i] = l; radd[i] = r; match[i] = m;
}

// A block that ends with a partial warp: the missing lanes do not exist and do not block the vote.
extern "C" __global__ void partial_warp_ballot(unsigned int* out, unsigned int* active) {
    const unsigned int b = __ballot_sync(0xffffffffu, 1);
    out[threadIdx.x] = b;
    active[threadIdx.x] = __activemask();
}

// Sub-warp groups: lanes 0-15 and 16-31 reduce separately with their own masks.
extern "C" __global__ void half_warp_sums(const float* x, float* out) {
    const int lane = threadIdx.x % 32;
    const unsigned int mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    float v = x[threadIdx.x];
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, 16);
    __syncwarp(mask);
    out[threadIdx.x] = v;
}

// Warp-synchronous shared memory exchange made correct with __syncwarp().
extern "C" __global__ void syncwarp_exchange(const int* x, int* out) {
    __shared__ int s[64];
    const int t = threadIdx.x;
    s[t] = x[t];
    __syncwarp();
    out[t] = s[t ^ 1];
}

// warp_sum from the helper header, then one value per warp.
extern "C" __global__ void helper_warp_sum(const float* x, float* out) {
    const float v = warp_sum(x[blockIdx.x * blockDim.x + threadIdx.x]);
    if (threadIdx.x % 32 == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = v;
}

// Lanes past n leave early; the rest reduce over the lanes __activemask() reports.
extern "C" __global__ void active_after_exit(const float* x, float* out, unsigned int* masks, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    const unsigned int m = __activemask();
    float v = x[i];
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_down_sync(m, v, o);
        if (i + o < n) v += u;
    }
    masks[i] = m;
    if (i == 0) out[0] = v;
}
