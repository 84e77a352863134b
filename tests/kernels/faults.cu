// Kernels with deliberate bugs; the tests expect the emulator to report them with file:line.
// The "// @name" comments mark the lines the tests look for.

// Threads past n return before a barrier the others wait at.
extern "C" __global__ void early_exit_barrier(float* data, int n) {
    __shared__ float s[128];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[threadIdx.x] = data[i];
    __syncthreads();  // @early_exit_barrier
    data[i] = s[(threadIdx.x + 1) % blockDim.x];
}

// Two halves of the block wait at different barriers.
extern "C" __global__ void split_barrier(float* data) {
    if (threadIdx.x < 16) {
        data[threadIdx.x] = 1.0f;
        __syncthreads();  // @split_a
    } else {
        data[threadIdx.x] = 2.0f;
        __syncthreads();  // @split_b
    }
}

// Lanes past n have exited when the others shuffle with a full mask.
extern "C" __global__ void shuffle_after_exit(float* data, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    float v = data[i];
    v += __shfl_down_sync(0xffffffffu, v, 1);  // @shuffle_after_exit
    data[i] = v;
}

// Odd lanes shuffle with a full mask while even lanes go on to a block barrier.
extern "C" __global__ void shuffle_vs_barrier(float* data) {
    float v = data[threadIdx.x];
    if (threadIdx.x % 2) v = __shfl_xor_sync(0xffffffffu, v, 1);  // @shuffle_vs_barrier
    __syncthreads();  // @shuffle_vs_barrier_sync
    data[threadIdx.x] = v;
}

// Every lane shuffles with a mask that names lane 0 only.
extern "C" __global__ void mask_without_self(float* data) {
    data[threadIdx.x] = __shfl_sync(0x1u, data[threadIdx.x], 0);  // @mask_without_self
}

// Explicit trap in one thread.
extern "C" __global__ void trap_when(const int* flags) {
    if (flags[blockIdx.x * blockDim.x + threadIdx.x]) __trap();  // @trap_when
}

// Writes through an index the caller chooses: out of bounds on purpose.
extern "C" __global__ void write_at(float* data, long long index) {
    if (threadIdx.x == 0 && blockIdx.x == 0) data[index] = 1.0f;  // @write_at
}

// Never finishes: spins on a flag that nobody sets.
extern "C" __global__ void spin_forever(volatile int* flag) {
    while (flag[0] == 0) { }
}

// Deep recursion overflows the (emulated) thread stack.
__device__ int burn_stack(int depth, volatile int* sink) {
    volatile int pad[512];
    pad[depth % 512] = depth;
    if (depth == 0) return pad[0];
    return burn_stack(depth - 1, sink) + pad[depth % 512] + sink[0];
}
extern "C" __global__ void stack_hog(volatile int* sink, int depth) {
    sink[1] = burn_stack(depth, sink);
}
