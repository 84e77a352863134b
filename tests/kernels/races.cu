// A missing __syncthreads and its fix: each element plus its left neighbour, through shared memory.

// BUG (on purpose): no barrier between the store to s[] and the neighbour's load.
extern "C" __global__ void neighbour_sum_racy(const float* x, float* out, int n) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    const float left = t > 0 ? s[t - 1] : 0.0f;
    if (i < n) out[i] = s[t] + left;
}

extern "C" __global__ void neighbour_sum(const float* x, float* out, int n) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    const float left = t > 0 ? s[t - 1] : 0.0f;
    if (i < n) out[i] = s[t] + left;
}

// BUG (on purpose): a warp exchanges through shared memory without __syncwarp().
extern "C" __global__ void warp_exchange_racy(const int* x, int* out) {
    __shared__ int s[32];
    const int t = threadIdx.x;
    s[t] = x[t];
    out[t] = s[31 - t];
}
