// Atomics on global and shared memory.

// Histogram of values in [0, nbins) through a shared-memory histogram, merged with global atomics.
extern "C" __global__ void histogram(const int* values, int n, unsigned int* hist, int nbins) {
    __shared__ unsigned int local[256];
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) local[b] = 0u;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        atomicAdd(&local[values[i]], 1u);
    __syncthreads();
    for (int b = threadIdx.x; b < nbins; b += blockDim.x)
        if (local[b]) atomicAdd(&hist[b], local[b]);
}

// Float and double sums, int max/min, exchange, and an atomicInc ticket per thread.
extern "C" __global__ void atomic_mix(const float* x, int n, float* fsum, double* dsum, int* imax, int* imin,
                                      unsigned int* tickets, unsigned int* counter) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(fsum, x[i]);
    atomicAdd(dsum, (double)x[i]);
    atomicMax(imax, (int)(x[i] * 1000.0f));
    atomicMin(imin, (int)(x[i] * 1000.0f));
    tickets[i] = atomicInc(counter, 0xffffffffu);
}

// A spin lock in shared memory guarding a non-atomic counter; the holder sleeps inside the critical
// section, so the other threads really spin (atomicCAS yields while it fails).
extern "C" __global__ void spin_lock_count(int* out) {
    __shared__ int lock;
    __shared__ int count;
    if (threadIdx.x == 0) { lock = 0; count = 0; }
    __syncthreads();
    bool done = false;
    while (!done) {
        if (atomicCAS(&lock, 0, 1) == 0) {
            const int c = count;
            __nanosleep(100);
            count = c + 1;
            __threadfence_block();
            atomicExch(&lock, 0);
            done = true;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = count;
}

// The "last block" pattern: every block adds its partial sum, the last to finish writes the total.
extern "C" __global__ void last_block_sum(const float* x, float* partial, unsigned int* done, float* total) {
    __shared__ bool is_last;
    __shared__ float s[128];
    s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
        float acc = 0.0f;
        for (int k = 0; k < (int)blockDim.x; ++k) acc += s[k];
        partial[blockIdx.x] = acc;
        __threadfence();
        const unsigned int ticket = atomicInc(done, gridDim.x);
        is_last = ticket == gridDim.x - 1;
    }
    __syncthreads();
    if (is_last && threadIdx.x == 0) {
        float acc = 0.0f;
        for (unsigned int b = 0; b < gridDim.x; ++b) acc += partial[b];
        *total = acc;
    }
}
