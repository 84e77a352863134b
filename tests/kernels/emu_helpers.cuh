// Shared helpers for the emulator test kernels (included with -I or relative to the .cu file).
#pragma once

#ifndef EMU_TEST_SCALE
#define EMU_TEST_SCALE 1
#endif

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over a block of up to 1024 threads; every thread gets the total. Uses a static __shared__
// array inside a template, which the emulator has to find and poison like any other.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int nwarps = (blockDim.x + 31) / 32;
    T total = T(0);
    for (int w = 0; w < nwarps; ++w) total += partial[w];
    __syncthreads();  // partial[] may be reused by the next call
    return total;
}
