// gpunet CPU emulator of CUDA kernels: the header force-included (g++ -include) before every kernel.
//
// It makes unchanged NVRTC-style kernel source compile with g++: the CUDA qualifiers, the builtin
// index variables, the block/warp intrinsics (which call into emu_runtime.cpp, where the threads of a
// block run as cooperative fibers) and the device math library. See docs/emulator.md.
//
// Fidelity rules followed here:
//  * NVRTC has no standard headers, so the C-library macros (INFINITY, NAN, M_PI, ...) are removed
//    again: a kernel that uses them fails here just as it fails under CuPy.
//  * Overload sets (min/max, shuffles, atomics) mirror CUDA's, so ambiguity errors match.
#ifndef GPUNET_CUDA_EMU_H
#define GPUNET_CUDA_EMU_H

// Bump when the runtime ABI or the meaning of anything below changes (part of the cache key).
#define GPUNET_EMU_HEADER_VERSION 1

// Standard headers first: the CUDA keyword macros below would break them.
#include <math.h>    // the C++ wrapper: float overloads of exp/log/... in the global namespace, like CUDA
#include <stdio.h>   // device-side printf (and size_t, which NVRTC also predefines)

#undef INFINITY
#undef NAN
#undef HUGE_VAL
#undef HUGE_VALF
#undef HUGE_VALL
#undef MAXFLOAT
#undef M_E
#undef M_LOG2E
#undef M_LOG10E
#undef M_LN2
#undef M_LN10
#undef M_PI
#undef M_PI_2
#undef M_PI_4
#undef M_1_PI
#undef M_2_PI
#undef M_2_SQRTPI
#undef M_SQRT2
#undef M_SQRT1_2

// ------------------------------------------------------------------ compiler identification
#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#define __GPUNET_EMU__ 1
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 800
#endif
#define __CUDACC_VER_MAJOR__ 12
#define __CUDACC_VER_MINOR__ 0

// ------------------------------------------------------------------ qualifiers
#ifdef __EMU_PARSE_PASS
// Signature pass (g++ -E): leave markers the Python side can find in the preprocessed text.
#define __global__ __emu_global__
#define __launch_bounds__(...) __emu_launch_bounds__(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__            /* g++ could use it to keep values across a barrier: drop it */
#define __grid_constant__
// Static shared memory: one instance per module (blocks run one after another). The Python side
// finds these variables in the symbol table and the runtime fills them with 0xFF (NaN / -1) before
// every block. `used` stops g++ from folding reads of a never-written array to zero.
// `extern __shared__ T a[];` is rewritten by the Python side before compiling (see _emu_source.py).
#ifdef __EMU_PARSE_PASS
#define __shared__ __emu_shared__ static
#else
#define __shared__ static __attribute__((used))
#endif

// ------------------------------------------------------------------ vector and index types
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define EMU_VEC1(N, T) \
    struct N { T x; }; \
    static inline N make_##N(T x) { return N{x}; }
#define EMU_VEC2(N, T, A) \
    struct __attribute__((aligned(A))) N { T x, y; }; \
    static inline N make_##N(T x, T y) { return N{x, y}; }
#define EMU_VEC3(N, T) \
    struct N { T x, y, z; }; \
    static inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define EMU_VEC4(N, T, A) \
    struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
#define EMU_VEC(B, T, A2, A4) EMU_VEC1(B##1, T) EMU_VEC2(B##2, T, A2) EMU_VEC3(B##3, T) EMU_VEC4(B##4, T, A4)
EMU_VEC(char, signed char, 2, 4)
EMU_VEC(uchar, unsigned char, 2, 4)
EMU_VEC(short, short, 4, 8)
EMU_VEC(ushort, unsigned short, 4, 8)
EMU_VEC(int, int, 8, 16)
EMU_VEC(float, float, 8, 16)
EMU_VEC(long, long, 16, 16)
EMU_VEC(ulong, unsigned long, 16, 16)
EMU_VEC(longlong, long long, 16, 16)
EMU_VEC(ulonglong, unsigned long long, 16, 16)
EMU_VEC(double, double, 16, 16)
EMU_VEC1(uint1, unsigned int)
EMU_VEC2(uint2, unsigned int, 8)
EMU_VEC4(uint4, unsigned int, 16)
static inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
#undef EMU_VEC
#undef EMU_VEC1
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4

// ------------------------------------------------------------------ runtime interface
namespace emu {
struct ThreadState { uint3 tid; };     // the head of the runtime's per-fiber record
#define EMU_HIDDEN __attribute__((visibility("hidden")))
extern ThreadState* cur EMU_HIDDEN;    // the fiber running now (one OS thread runs a whole launch)
extern uint3 g_blockIdx EMU_HIDDEN;
extern dim3 g_blockDim EMU_HIDDEN;
extern dim3 g_gridDim EMU_HIDDEN;
extern char* dyn_smem EMU_HIDDEN;      // this launch's dynamic shared memory (shared_mem bytes)

// Warp collectives, all funnelled through one runtime call (emu_runtime.cpp, enum WarpOp).
enum WarpOp {
    W_SYNC = 0, W_SHFL_IDX, W_SHFL_UP, W_SHFL_DOWN, W_SHFL_XOR, W_BALLOT, W_ANY, W_ALL, W_UNI,
    W_RED_ADD, W_RED_MIN_U, W_RED_MIN_I, W_RED_MAX_U, W_RED_MAX_I, W_RED_AND, W_RED_OR, W_RED_XOR,
    W_MATCH_ANY, W_MATCH_ALL, W_NKINDS
};
unsigned long long warp_op(int op, unsigned mask, unsigned long long value, int arg, int width,
                           const char* file, int line) EMU_HIDDEN;
int block_barrier(int kind, int pred, const char* file, int line) EMU_HIDDEN;  // kind 0..3
unsigned active_mask() EMU_HIDDEN;
void yield_now() EMU_HIDDEN;
[[noreturn]] void trap(const char* what, const char* file, int line) EMU_HIDDEN;
unsigned long long clock_tick() EMU_HIDDEN;

struct Site { const char* file; int line; };
template <class T> static inline unsigned long long to_bits(T v) {
    unsigned long long b = 0;
    __builtin_memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> static inline T from_bits(unsigned long long b) {
    T v;
    __builtin_memcpy(&v, &b, sizeof(T));
    return v;
}
template <class T> static inline T shfl(Site s, int op, unsigned mask, T v, int arg, int width) {
    return from_bits<T>(warp_op(op, mask, to_bits(v), arg, width, s.file, s.line));
}
// `__syncwarp()` takes an optional mask; a functor keeps the call site in a one-argument macro.
struct SyncwarpAt {
    Site s;
    void operator()(unsigned mask = 0xffffffffu) const { warp_op(W_SYNC, mask, 0, 0, 32, s.file, s.line); }
};
// Dynamic shared memory declared at namespace scope (rewritten `extern __shared__ T name[];`).
template <class T> struct DynShared {
    operator T*() const { return reinterpret_cast<T*>(dyn_smem); }
    template <class U> explicit operator U*() const { return reinterpret_cast<U*>(dyn_smem); }
    T& operator[](long long i) const { return reinterpret_cast<T*>(dyn_smem)[i]; }
};
// Trampoline support: call a kernel with its arguments given as an array of pointers to values.
template <unsigned long... I> struct Idx {};
template <unsigned long N, unsigned long... I> struct MakeIdx : MakeIdx<N - 1, N - 1, I...> {};
template <unsigned long... I> struct MakeIdx<0, I...> { using type = Idx<I...>; };
template <class... A, unsigned long... I> static inline void invoke_(void (*f)(A...), void** a, Idx<I...>) {
    f(*static_cast<A*>(a[I])...);
}
template <class... A> static inline void invoke(void (*f)(A...), void** a) {
    invoke_(f, a, typename MakeIdx<sizeof...(A)>::type{});
}
}  // namespace emu

// The builtin variables. threadIdx is per fiber; the others are per launch/block. All read-only.
#define threadIdx (static_cast<const uint3&>(::emu::cur->tid))
#define blockIdx (static_cast<const uint3&>(::emu::g_blockIdx))
#define blockDim (static_cast<const dim3&>(::emu::g_blockDim))
#define gridDim (static_cast<const dim3&>(::emu::g_gridDim))
static constexpr int warpSize = 32;

#define EMU_SITE ::emu::Site{__FILE__, __LINE__}

// ------------------------------------------------------------------ block synchronisation
#define __syncthreads() ::emu::block_barrier(0, 1, __FILE__, __LINE__)
#define __syncthreads_count(p) ::emu::block_barrier(1, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_and(p) ::emu::block_barrier(2, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_or(p) ::emu::block_barrier(3, (p) ? 1 : 0, __FILE__, __LINE__)
// One OS thread runs a block and every yield is an opaque call: memory is sequentially consistent.
#define __threadfence() ((void)0)
#define __threadfence_block() ((void)0)
#define __threadfence_system() ((void)0)
#define __trap() ::emu::trap("__trap()", __FILE__, __LINE__)
#define __brkpt() ::emu::trap("__brkpt()", __FILE__, __LINE__)
#ifndef assert
#define assert(e) ((e) ? (void)0 : ::emu::trap("assertion `" #e "` failed", __FILE__, __LINE__))
#endif
static inline void __nanosleep(unsigned) { ::emu::yield_now(); }
static inline long long clock64() { return (long long)::emu::clock_tick(); }

// ------------------------------------------------------------------ warp collectives
#define __syncwarp(...) (::emu::SyncwarpAt{EMU_SITE}(__VA_ARGS__))
#define __shfl_sync(...) ::emu::shfl_sync_(EMU_SITE, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl_up_sync_(EMU_SITE, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl_down_sync_(EMU_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl_xor_sync_(EMU_SITE, __VA_ARGS__)
#define __ballot_sync(m, p) ((unsigned)::emu::warp_op(::emu::W_BALLOT, (m), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(m, p) ((int)::emu::warp_op(::emu::W_ANY, (m), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(m, p) ((int)::emu::warp_op(::emu::W_ALL, (m), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __uni_sync(m, p) ((int)::emu::warp_op(::emu::W_UNI, (m), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __activemask() (::emu::active_mask())
#define __reduce_add_sync(...) ::emu::reduce_add_(EMU_SITE, __VA_ARGS__)
#define __reduce_min_sync(...) ::emu::reduce_min_(EMU_SITE, __VA_ARGS__)
#define __reduce_max_sync(...) ::emu::reduce_max_(EMU_SITE, __VA_ARGS__)
#define __reduce_and_sync(m, v) ((unsigned)::emu::warp_op(::emu::W_RED_AND, (m), (unsigned)(v), 0, 32, __FILE__, __LINE__))
#define __reduce_or_sync(m, v) ((unsigned)::emu::warp_op(::emu::W_RED_OR, (m), (unsigned)(v), 0, 32, __FILE__, __LINE__))
#define __reduce_xor_sync(m, v) ((unsigned)::emu::warp_op(::emu::W_RED_XOR, (m), (unsigned)(v), 0, 32, __FILE__, __LINE__))
#define __match_any_sync(...) ::emu::match_any_(EMU_SITE, __VA_ARGS__)
#define __match_all_sync(...) ::emu::match_all_(EMU_SITE, __VA_ARGS__)

namespace emu {
// CUDA's shuffle overloads: int, unsigned, long, unsigned long, long long, unsigned long long,
// float, double (no templates, so a short or bool promotes to int exactly as under nvcc).
#define EMU_SHFL(T)                                                                                     \
    static inline T shfl_sync_(Site s, unsigned m, T v, int src, int w = 32) { return shfl(s, W_SHFL_IDX, m, v, src, w); } \
    static inline T shfl_up_sync_(Site s, unsigned m, T v, unsigned d, int w = 32) { return shfl(s, W_SHFL_UP, m, v, (int)d, w); } \
    static inline T shfl_down_sync_(Site s, unsigned m, T v, unsigned d, int w = 32) { return shfl(s, W_SHFL_DOWN, m, v, (int)d, w); } \
    static inline T shfl_xor_sync_(Site s, unsigned m, T v, int l, int w = 32) { return shfl(s, W_SHFL_XOR, m, v, l, w); } \
    static inline unsigned match_any_(Site s, unsigned m, T v) {                                       \
        return (unsigned)warp_op(W_MATCH_ANY, m, to_bits(v), 0, 32, s.file, s.line);                  \
    }                                                                                                   \
    static inline unsigned match_all_(Site s, unsigned m, T v, int* pred) {                            \
        unsigned long long r = warp_op(W_MATCH_ALL, m, to_bits(v), 0, 32, s.file, s.line);             \
        *pred = (int)(r >> 32);                                                                         \
        return (unsigned)r;                                                                             \
    }
EMU_SHFL(int)
EMU_SHFL(unsigned int)
EMU_SHFL(long)
EMU_SHFL(unsigned long)
EMU_SHFL(long long)
EMU_SHFL(unsigned long long)
EMU_SHFL(float)
EMU_SHFL(double)
#undef EMU_SHFL
static inline unsigned reduce_add_(Site s, unsigned m, unsigned v) { return (unsigned)warp_op(W_RED_ADD, m, v, 0, 32, s.file, s.line); }
static inline int reduce_add_(Site s, unsigned m, int v) { return (int)warp_op(W_RED_ADD, m, (unsigned)v, 0, 32, s.file, s.line); }
static inline unsigned reduce_min_(Site s, unsigned m, unsigned v) { return (unsigned)warp_op(W_RED_MIN_U, m, v, 0, 32, s.file, s.line); }
static inline int reduce_min_(Site s, unsigned m, int v) { return (int)warp_op(W_RED_MIN_I, m, (unsigned)v, 0, 32, s.file, s.line); }
static inline unsigned reduce_max_(Site s, unsigned m, unsigned v) { return (unsigned)warp_op(W_RED_MAX_U, m, v, 0, 32, s.file, s.line); }
static inline int reduce_max_(Site s, unsigned m, int v) { return (int)warp_op(W_RED_MAX_I, m, (unsigned)v, 0, 32, s.file, s.line); }
}  // namespace emu

// ------------------------------------------------------------------ atomics
// Fibers never preempt each other, so a plain read-modify-write is atomic. atomicCAS yields when it
// fails so that a spin lock lets the lock holder run.
#define EMU_ATOMIC_BIN(NAME, T, EXPR)                     \
    static inline T NAME(T* p, T v) { T o = *p; *p = (EXPR); return o; }
EMU_ATOMIC_BIN(atomicAdd, int, o + v)
EMU_ATOMIC_BIN(atomicAdd, unsigned int, o + v)
EMU_ATOMIC_BIN(atomicAdd, unsigned long long, o + v)
EMU_ATOMIC_BIN(atomicAdd, float, o + v)
EMU_ATOMIC_BIN(atomicAdd, double, o + v)
EMU_ATOMIC_BIN(atomicSub, int, o - v)
EMU_ATOMIC_BIN(atomicSub, unsigned int, o - v)
EMU_ATOMIC_BIN(atomicExch, int, v)
EMU_ATOMIC_BIN(atomicExch, unsigned int, v)
EMU_ATOMIC_BIN(atomicExch, unsigned long long, v)
EMU_ATOMIC_BIN(atomicExch, float, v)
EMU_ATOMIC_BIN(atomicMin, int, v < o ? v : o)
EMU_ATOMIC_BIN(atomicMin, unsigned int, v < o ? v : o)
EMU_ATOMIC_BIN(atomicMin, long long, v < o ? v : o)
EMU_ATOMIC_BIN(atomicMin, unsigned long long, v < o ? v : o)
EMU_ATOMIC_BIN(atomicMax, int, v > o ? v : o)
EMU_ATOMIC_BIN(atomicMax, unsigned int, v > o ? v : o)
EMU_ATOMIC_BIN(atomicMax, long long, v > o ? v : o)
EMU_ATOMIC_BIN(atomicMax, unsigned long long, v > o ? v : o)
EMU_ATOMIC_BIN(atomicAnd, int, o & v)
EMU_ATOMIC_BIN(atomicAnd, unsigned int, o & v)
EMU_ATOMIC_BIN(atomicAnd, unsigned long long, o & v)
EMU_ATOMIC_BIN(atomicOr, int, o | v)
EMU_ATOMIC_BIN(atomicOr, unsigned int, o | v)
EMU_ATOMIC_BIN(atomicOr, unsigned long long, o | v)
EMU_ATOMIC_BIN(atomicXor, int, o ^ v)
EMU_ATOMIC_BIN(atomicXor, unsigned int, o ^ v)
EMU_ATOMIC_BIN(atomicXor, unsigned long long, o ^ v)
EMU_ATOMIC_BIN(atomicInc, unsigned int, o >= v ? 0u : o + 1u)
EMU_ATOMIC_BIN(atomicDec, unsigned int, (o == 0u || o > v) ? v : o - 1u)
#undef EMU_ATOMIC_BIN
#define EMU_ATOMIC_CAS(T)                                       \
    static inline T atomicCAS(T* p, T cmp, T v) {               \
        T o = *p;                                               \
        if (o == cmp) *p = v; else ::emu::yield_now();          \
        return o;                                               \
    }
EMU_ATOMIC_CAS(int)
EMU_ATOMIC_CAS(unsigned int)
EMU_ATOMIC_CAS(unsigned long long)
EMU_ATOMIC_CAS(unsigned short)
#undef EMU_ATOMIC_CAS
#define EMU_ATOMIC_SCOPES(NAME) template <class... A> static inline auto NAME##_block(A... a) { return NAME(a...); } \
                                template <class... A> static inline auto NAME##_system(A... a) { return NAME(a...); }
EMU_ATOMIC_SCOPES(atomicAdd) EMU_ATOMIC_SCOPES(atomicSub) EMU_ATOMIC_SCOPES(atomicExch)
EMU_ATOMIC_SCOPES(atomicMin) EMU_ATOMIC_SCOPES(atomicMax) EMU_ATOMIC_SCOPES(atomicAnd)
EMU_ATOMIC_SCOPES(atomicOr) EMU_ATOMIC_SCOPES(atomicXor) EMU_ATOMIC_SCOPES(atomicInc)
EMU_ATOMIC_SCOPES(atomicDec) EMU_ATOMIC_SCOPES(atomicCAS)
#undef EMU_ATOMIC_SCOPES

// ------------------------------------------------------------------ cache-hinted loads/stores
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline T __ldca(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
template <class T> static inline T __ldlu(const T* p) { return *p; }
template <class T> static inline T __ldcv(const T* p) { return *p; }
template <class T> static inline void __stcg(T* p, T v) { *p = v; }
template <class T> static inline void __stcs(T* p, T v) { *p = v; }
template <class T> static inline void __stwb(T* p, T v) { *p = v; }
template <class T> static inline void __stwt(T* p, T v) { *p = v; }

// ------------------------------------------------------------------ min / max (CUDA's overload set)
#define EMU_MINMAX(A, B, R)                                                         \
    static inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; }             \
    static inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
EMU_MINMAX(int, int, int)
EMU_MINMAX(unsigned int, unsigned int, unsigned int)
EMU_MINMAX(int, unsigned int, unsigned int)
EMU_MINMAX(unsigned int, int, unsigned int)
EMU_MINMAX(long, long, long)
EMU_MINMAX(unsigned long, unsigned long, unsigned long)
EMU_MINMAX(long, unsigned long, unsigned long)
EMU_MINMAX(unsigned long, long, unsigned long)
EMU_MINMAX(long long, long long, long long)
EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
EMU_MINMAX(long long, unsigned long long, unsigned long long)
EMU_MINMAX(unsigned long long, long long, unsigned long long)
#undef EMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin((double)a, b); }
static inline double max(float a, double b) { return fmax((double)a, b); }
static inline double min(double a, float b) { return fmin(a, (double)b); }
static inline double max(double a, float b) { return fmax(a, (double)b); }
static inline unsigned int umin(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int umax(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline long long llmin(long long a, long long b) { return a < b ? a : b; }
static inline long long llmax(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

// ------------------------------------------------------------------ float math beyond libm
// Intrinsic ("fast") variants are computed exactly: results can differ from a GPU in the last bits.
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static inline double rcbrt(double x) { return 1.0 / cbrt(x); }
static inline float fdividef(float a, float b) { return a / b; }
static inline float __fdividef(float a, float b) { return a / b; }
// glibc declares (but does not export) __expf & co.: map CUDA's fast intrinsics onto the exact functions.
#define __expf expf
#define __exp10f exp10f
#define __logf logf
#define __log2f log2f
#define __log10f log10f
#define __sinf sinf
#define __cosf cosf
#define __tanf tanf
#define __powf powf
#define __sincosf sincosf
static inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline double __drcp_rn(double x) { return 1.0 / x; }
static inline double __dsqrt_rn(double x) { return sqrt(x); }
static inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
static inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }

// ------------------------------------------------------------------ conversions and bit casts
#define EMU_CVT(NAME, FROM, TO, LO, HI, ROUND)                                      \
    static inline TO NAME(FROM x) {                                                 \
        if (x != x) return (TO)0;                                                   \
        FROM r = ROUND(x);                                                          \
        if (r <= (FROM)(LO)) return (TO)(LO);                                       \
        if (r >= (FROM)(HI)) return (TO)(HI);                                       \
        return (TO)r;                                                               \
    }
// CUDA saturates out-of-range values and maps NaN to 0 (x86 would give INT_MIN).
EMU_CVT(__float2int_rn, float, int, -2147483648.0f, 2147483647, nearbyintf)
EMU_CVT(__float2int_rz, float, int, -2147483648.0f, 2147483647, truncf)
EMU_CVT(__float2int_rd, float, int, -2147483648.0f, 2147483647, floorf)
EMU_CVT(__float2int_ru, float, int, -2147483648.0f, 2147483647, ceilf)
EMU_CVT(__float2uint_rn, float, unsigned int, 0.0f, 4294967295u, nearbyintf)
EMU_CVT(__float2uint_rz, float, unsigned int, 0.0f, 4294967295u, truncf)
EMU_CVT(__float2uint_rd, float, unsigned int, 0.0f, 4294967295u, floorf)
EMU_CVT(__float2uint_ru, float, unsigned int, 0.0f, 4294967295u, ceilf)
EMU_CVT(__float2ll_rn, float, long long, -9223372036854775808.0f, 9223372036854775807LL, nearbyintf)
EMU_CVT(__float2ll_rz, float, long long, -9223372036854775808.0f, 9223372036854775807LL, truncf)
EMU_CVT(__double2int_rn, double, int, -2147483648.0, 2147483647, nearbyint)
EMU_CVT(__double2int_rz, double, int, -2147483648.0, 2147483647, trunc)
EMU_CVT(__double2int_rd, double, int, -2147483648.0, 2147483647, floor)
EMU_CVT(__double2int_ru, double, int, -2147483648.0, 2147483647, ceil)
EMU_CVT(__double2ll_rn, double, long long, -9223372036854775808.0, 9223372036854775807LL, nearbyint)
EMU_CVT(__double2ll_rz, double, long long, -9223372036854775808.0, 9223372036854775807LL, trunc)
#undef EMU_CVT
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned int x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline double __int2double_rn(int x) { return (double)x; }
static inline double __ll2double_rn(long long x) { return (double)x; }
static inline float __double2float_rn(double x) { return (float)x; }
static inline float __int_as_float(int x) { return ::emu::from_bits<float>((unsigned int)x); }
static inline int __float_as_int(float x) { return (int)(unsigned int)::emu::to_bits(x); }
static inline float __uint_as_float(unsigned int x) { return ::emu::from_bits<float>(x); }
static inline unsigned int __float_as_uint(float x) { return (unsigned int)::emu::to_bits(x); }
static inline double __longlong_as_double(long long x) { return ::emu::from_bits<double>((unsigned long long)x); }
static inline long long __double_as_longlong(double x) { return (long long)::emu::to_bits(x); }
static inline double __hiloint2double(int hi, int lo) {
    return ::emu::from_bits<double>(((unsigned long long)(unsigned int)hi << 32) | (unsigned int)lo);
}
static inline int __double2hiint(double x) { return (int)(::emu::to_bits(x) >> 32); }
static inline int __double2loint(double x) { return (int)(unsigned int)::emu::to_bits(x); }

// ------------------------------------------------------------------ integer intrinsics
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
static inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned int)x) << 32) | __brev((unsigned int)(x >> 32));
}
static inline int __mul24(int a, int b) { return ((a << 8) >> 8) * ((b << 8) >> 8); }
static inline unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffffu) * (b & 0xffffffu); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a * b) >> 32); }
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned int)((v >> (((s >> (4 * i)) & 7u) * 8)) & 0xffu) << (8 * i);
    return r;
}
static inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)((((unsigned long long)hi << 32 | lo) << (s & 31)) >> 32);
}
static inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)(((unsigned long long)hi << 32 | lo) >> (s & 31));
}
static inline unsigned int __sad(int a, int b, unsigned int c) { return (unsigned int)(a > b ? a - b : b - a) + c; }
static inline unsigned int __usad(unsigned int a, unsigned int b, unsigned int c) { return (a > b ? a - b : b - a) + c; }
static inline int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
static inline int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }

#endif  // GPUNET_CUDA_EMU_H
