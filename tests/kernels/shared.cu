// Shared memory: tiled transpose, tree reduction, dynamic shared memory, poison of uninitialised reads.
#include "emu_helpers.cuh"

#define TILE 32
#define ROWS 8

// out (cols, rows) = in (rows, cols)^T with a 32x33 tile (padding against bank conflicts) and 32x8 blocks.
extern "C" __global__ void transpose_tiled(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
    __shared__ float tile[TILE][TILE + 1];
    int x = blockIdx.x * TILE + threadIdx.x;
    int y = blockIdx.y * TILE + threadIdx.y;
    for (int j = 0; j < TILE; j += ROWS)
        if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
    __syncthreads();
    x = blockIdx.y * TILE + threadIdx.x;
    y = blockIdx.x * TILE + threadIdx.y;
    for (int j = 0; j < TILE; j += ROWS)
        if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
}

// out[blockIdx.x] = sum of this block's slice; classic shared-memory tree with a barrier per level.
// blockDim.x must be a power of two <= 1024.
extern "C" __global__ void reduce_tree(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float s[1024];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (t < k) s[t] += s[t + k];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// Tree down to one warp, then warp shuffles: the benchmark kernel of the emulator tests.
extern "C" __global__ void reduce_tree_shfl(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float s[1024];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int k = blockDim.x / 2; k >= 32; k >>= 1) {
        if (t < k) s[t] += s[t + k];
        __syncthreads();
    }
    if (t < 32) {
        float v = s[t];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (t == 0) out[blockIdx.x] = v;
    }
}

// Same reduction through the templated helper (static __shared__ inside a template).
extern "C" __global__ void reduce_helper(const double* __restrict__ x, double* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const double total = block_sum<double>(i < n ? x[i] : 0.0);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

// Reverse each block's slice through dynamic shared memory sized blockDim.x floats.
extern "C" __global__ void reverse_dynamic(float* data, int n) {
    extern __shared__ float buf[];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    if (i < n) buf[t] = data[i];
    __syncthreads();
    const int base = blockIdx.x * blockDim.x;
    const int len = min((int)blockDim.x, n - base);
    if (t < len) data[base + t] = buf[len - 1 - t];
}

// Dynamic shared memory viewed through two types (float header + int payload), 16-byte aligned.
extern "C" __global__ void dynamic_two_views(int* out, float scale) {
    extern __shared__ __align__(16) unsigned char raw[];
    float* f = reinterpret_cast<float*>(raw);
    int* payload = reinterpret_cast<int*>(raw + 16);
    if (threadIdx.x == 0) f[0] = scale;
    payload[threadIdx.x] = (int)threadIdx.x * 3;
    __syncthreads();
    out[threadIdx.x] = (int)(f[0] * (float)payload[blockDim.x - 1 - threadIdx.x]);
}

// Reads shared memory nobody wrote: the emulator poisons it (NaN for float, -1 for int).
extern "C" __global__ void read_uninitialised(float* fout, int* iout, float* dyn_out) {
    __shared__ float fs[64];
    __shared__ int is[64];
    extern __shared__ float dyn[];
    fs[0] = 1.0f;                      // one element written, the rest stay poisoned
    fout[threadIdx.x] = fs[threadIdx.x];
    iout[threadIdx.x] = is[threadIdx.x];
    dyn_out[threadIdx.x] = dyn[threadIdx.x];
}

// Shared state must not leak from one block to the next: block b writes only if b is even,
// odd blocks must then still read poison.
extern "C" __global__ void block_isolation(float* out) {
    __shared__ float s[32];
    if (blockIdx.x % 2 == 0) s[threadIdx.x] = (float)blockIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

// Dynamic shared memory declared at namespace scope, used by two kernels.
extern __shared__ float g_dynamic[];

extern "C" __global__ void rotate_dynamic_global(float* data) {
    const int t = threadIdx.x;
    g_dynamic[t] = data[blockIdx.x * blockDim.x + t];
    __syncthreads();
    data[blockIdx.x * blockDim.x + t] = g_dynamic[(t + 1) % blockDim.x];
}

// __syncthreads_count / _and / _or over x > 0.
extern "C" __global__ void barrier_votes(const int* x, int* out) {
    const int p = x[threadIdx.x] > 0;
    const int c = __syncthreads_count(p);
    const int a = __syncthreads_and(p);
    const int o = __syncthreads_or(p);
    if (threadIdx.x == 0) { out[0] = c; out[1] = a; out[2] = o; }
}
