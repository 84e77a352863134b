// gpunet CPU emulator of CUDA kernels: the launch runtime, linked into every emulated module.
//
// One OS thread runs a whole launch. The blocks run one after another; the threads of a block are
// cooperative fibers (x86-64: a 14-instruction context switch below; elsewhere ucontext). A fiber
// runs until it reaches __syncthreads, a warp collective or its end, then control returns to the
// scheduler loop, which resumes the next runnable fiber: in thread order by default, or in a seeded
// random order. When nothing is runnable the scheduler either releases a barrier or, when the block
// can never make progress (barrier divergence, a warp collective missing lanes), reports a deadlock.
//
// Every module .so gets its own copy of this file's state; Python serialises launches per module.
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#if !defined(__x86_64__) || defined(EMU_USE_UCONTEXT)
#include <ucontext.h>
#define EMU_UCONTEXT 1
#endif

#include "cuda_emu.h"

#define EMU_API extern "C" __attribute__((visibility("default")))

// ------------------------------------------------------------------ results shared with Python
enum { EMU_OK = 0, EMU_ELAUNCH = 1, EMU_EDEADLOCK = 2, EMU_ETRAP = 3, EMU_ECRASH = 4, EMU_ETIMEOUT = 5,
       EMU_EINTERNAL = 6 };

struct EmuResult {              // mirrored by emulator._Result (ctypes)
    int32_t code;
    int32_t signo;
    uint64_t fault_addr;
    uint64_t fault_pc;
    uint64_t pc_offset;         // fault_pc - load base of this module, when in_module
    int32_t in_module;
    int32_t has_thread;         // block/thread below are meaningful
    int32_t block[3];
    int32_t thread[3];
    char where[256];            // symbol/library of fault_pc when outside this module
    char msg[2048];
};

namespace emu {
ThreadState* cur;
uint3 g_blockIdx;
dim3 g_blockDim;
dim3 g_gridDim;
char* dyn_smem;
}  // namespace emu


namespace {

enum : uint8_t { RUNNABLE, AT_BARRIER, AT_WARP, AT_ACTIVEMASK, EXITED };

struct Fiber {
    emu::ThreadState ts;        // first: emu::cur points here
    void* sp;                   // saved stack pointer while suspended
#ifdef EMU_UCONTEXT
    ucontext_t uc;
#endif
    char* stack_lo;             // lowest usable byte (the guard page lies just below)
    uint32_t linear, lane, warp;
    uint8_t state;
    int kind;                   // barrier kind or WarpOp while waiting
    int pred, arg, width;
    uint32_t mask;
    uint64_t value, result;
    const char* file;
    int line;
};

struct Warp {
    uint32_t exists;            // lanes present in this (possibly partial) warp
    uint32_t exited;
    uint32_t arrived;           // lanes waiting at a warp collective
};

const char* const kOpName[] = {
    "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
    "__ballot_sync", "__any_sync", "__all_sync", "__uni_sync", "__reduce_add_sync",
    "__reduce_min_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_max_sync",
    "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync", "__match_any_sync",
    "__match_all_sync"};
const char* const kBarName[] = {"__syncthreads()", "__syncthreads_count()", "__syncthreads_and()",
                                "__syncthreads_or()"};

// ---- launch state (one launch at a time per module)
Fiber* g_fibers;
int g_cap;                      // fibers (and stacks) allocated
char* g_stacks;
size_t g_stack_bytes, g_slot_bytes, g_stacks_len, g_page;
uint32_t* g_q;                  // run queue ring, capacity g_cap (a power of two)
uint32_t g_qhead, g_qtail;
Warp g_warps[32];
int g_n;                        // threads per block
int g_nexited, g_nbar, g_nwarpwait, g_nactive;
void (*g_tramp)(void**);
void** g_args;
Fiber* g_curf;
bool g_in_fiber;
int g_abort;
bool g_random;
uint64_t g_rng;
const char* g_kname;
EmuResult* g_res;
uint64_t g_clock;
struct Range { char* p; size_t n; };
Range* g_static;                // static __shared__ variables (set by Python from the symbol table)
int g_nstatic;
size_t g_static_bytes;
char* g_dyn_region;             // dynamic shared memory arena; a guard page follows g_dyn_end
char* g_dyn_end;
size_t g_dyn_cap;
#ifdef EMU_UCONTEXT
ucontext_t g_sched_uc;
#else
void* g_sched_sp;
#endif

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

}  // namespace

// ------------------------------------------------------------------ context switching
#ifndef EMU_UCONTEXT
// void emu_ctx_switch(void** save_sp, void* new_sp): push the callee-saved registers, park the stack
// pointer, adopt the other stack and pop its registers. No signal-mask syscall (unlike swapcontext).
asm(R"(
    .text
    .p2align 4
    .globl emu_ctx_switch
    .hidden emu_ctx_switch
    .type emu_ctx_switch,@function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch
)");
extern "C" void emu_ctx_switch(void** save_sp, void* new_sp);
#endif

namespace {

[[noreturn]] void fiber_main();

// Make fiber f start at fiber_main() on its own stack the next time it is resumed.
void fiber_reset(Fiber* f) {
#ifdef EMU_UCONTEXT
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack_lo;
    f->uc.uc_stack.ss_size = g_stack_bytes;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())fiber_main, 0);
#else
    // Stack top: [ret slot = fiber_main][6 callee-saved registers]; `ret` then enters fiber_main with
    // rsp = 8 mod 16, exactly as after a call.
    uintptr_t top = ((uintptr_t)(f->stack_lo + g_stack_bytes)) & ~(uintptr_t)15;
    void** sp = (void**)(top - 16);
    sp[1] = nullptr;
    sp[0] = (void*)&fiber_main;
    sp -= 6;
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    f->sp = sp;
#endif
}

inline void resume(Fiber* f) {
    g_curf = f;
    emu::cur = &f->ts;
    g_in_fiber = true;
#ifdef EMU_UCONTEXT
    swapcontext(&g_sched_uc, &f->uc);
#else
    emu_ctx_switch(&g_sched_sp, f->sp);
#endif
    g_in_fiber = false;
}

inline void to_scheduler(Fiber* f) {
#ifdef EMU_UCONTEXT
    swapcontext(&f->uc, &g_sched_uc);
#else
    emu_ctx_switch(&f->sp, g_sched_sp);
#endif
}

// ---- run queue
inline void q_push(uint32_t i) { g_q[g_qtail++ & (uint32_t)(g_cap - 1)] = i; }
inline bool q_empty() { return g_qhead == g_qtail; }
inline uint32_t q_pop() {
    const uint32_t m = (uint32_t)(g_cap - 1);
    if (g_random) {  // swap a random queued fiber to the head
        uint32_t size = g_qtail - g_qhead;
        uint32_t j = (g_qhead + (uint32_t)(splitmix(g_rng) % size)) & m;
        uint32_t h = g_qhead & m;
        uint32_t t = g_q[h]; g_q[h] = g_q[j]; g_q[j] = t;
    }
    return g_q[g_qhead++ & m];
}

// ---- error reporting
int vfail(int code, const Fiber* f, const char* fmt, va_list ap) {
    if (g_abort) return g_abort;        // keep the first error
    g_abort = code;
    EmuResult* r = g_res;
    r->code = code;
    if (f) {
        r->has_thread = 1;
        r->block[0] = (int)emu::g_blockIdx.x; r->block[1] = (int)emu::g_blockIdx.y; r->block[2] = (int)emu::g_blockIdx.z;
        r->thread[0] = (int)f->ts.tid.x; r->thread[1] = (int)f->ts.tid.y; r->thread[2] = (int)f->ts.tid.z;
    }
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    return code;
}

int fail(int code, const Fiber* f, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(code, f, fmt, ap);
    va_end(ap);
    return code;
}

// Called on a fiber: record the error and leave the fiber for good (its stack is simply reused).
[[noreturn]] void fiber_fail(int code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(code, g_curf, fmt, ap);
    va_end(ap);
    to_scheduler(g_curf);
    __builtin_unreachable();
}

#define TFMT "(%u,%u,%u)"
#define TARGS(f) (f)->ts.tid.x, (f)->ts.tid.y, (f)->ts.tid.z
#define BFMT "(%u,%u,%u)"
#define BARGS emu::g_blockIdx.x, emu::g_blockIdx.y, emu::g_blockIdx.z

[[noreturn]] void fiber_main() {
    g_tramp(g_args);
    Fiber* f = g_curf;
    f->state = EXITED;
    f->file = nullptr;
    ++g_nexited;
    g_warps[f->warp].exited |= 1u << f->lane;
    to_scheduler(f);
    __builtin_unreachable();
}

bool same_site(const Fiber* a, const Fiber* b) {
    return a->line == b->line && a->kind == b->kind && (a->file == b->file || strcmp(a->file, b->file) == 0);
}

void describe(const Fiber* f, char* buf, size_t n) {
    switch (f->state) {
        case EXITED: snprintf(buf, n, "has exited (returned from the kernel)"); break;
        case AT_BARRIER: snprintf(buf, n, "waits at %s at %s:%d", kBarName[f->kind], f->file, f->line); break;
        case AT_WARP: snprintf(buf, n, "waits at %s (mask 0x%08x) at %s:%d", kOpName[f->kind], f->mask, f->file, f->line); break;
        case AT_ACTIVEMASK: snprintf(buf, n, "waits in __activemask()"); break;
        default: snprintf(buf, n, "is runnable"); break;
    }
}

// __activemask() callers wait until nothing else can run; then each gets the set of lanes of its
// warp that wait there too, i.e. the lanes that converged on it (exited or blocked lanes are not in it).
void release_activemask() {
    for (int i = 0; i < g_n; ++i) {
        Fiber* f = &g_fibers[i];
        if (f->state != AT_ACTIVEMASK) continue;
        uint32_t m = 0;
        for (int l = 0; l < 32 && f->warp * 32 + l < (uint32_t)g_n; ++l)
            if (g_fibers[f->warp * 32 + l].state == AT_ACTIVEMASK) m |= 1u << l;
        f->result = m;
    }
    for (int i = 0; i < g_n; ++i) {
        if (g_fibers[i].state != AT_ACTIVEMASK) continue;
        g_fibers[i].state = RUNNABLE;
        q_push((uint32_t)i);
    }
    g_nactive = 0;
}

// Nothing is runnable and the block has not finished: release a barrier or report why it is stuck.
int resolve() {
    char why[512];
    if (g_nactive > 0) {
        release_activemask();
        return 0;
    }
    if (g_nwarpwait > 0) {
        for (int i = 0; i < g_n; ++i) {
            Fiber* f = &g_fibers[i];
            if (f->state != AT_WARP) continue;
            const Warp& w = g_warps[f->warp];
            uint32_t missing = f->mask & w.exists & ~w.arrived;
            if (!missing) continue;
            const Fiber* m = &g_fibers[f->warp * 32 + __builtin_ctz(missing)];
            describe(m, why, sizeof why);
            return fail(EMU_EDEADLOCK, f,
                        "warp collective deadlock in kernel '%s': %s (mask 0x%08x) at %s:%d in thread " TFMT
                        " of block " BFMT " can never complete: lane %u, thread " TFMT ", %s",
                        g_kname, kOpName[f->kind], f->mask, f->file, f->line, TARGS(f), BARGS, m->lane,
                        TARGS(m), why);
        }
        return fail(EMU_EINTERNAL, nullptr, "emulator internal error: warp waiters without a missing lane");
    }
    Fiber* first = nullptr;
    for (int i = 0; i < g_n && !first; ++i)
        if (g_fibers[i].state == AT_BARRIER) first = &g_fibers[i];
    if (!first) return fail(EMU_EINTERNAL, nullptr, "emulator internal error: stalled block without waiters");
    if (g_nexited > 0) {
        const Fiber* gone = nullptr;
        for (int i = 0; i < g_n && !gone; ++i)
            if (g_fibers[i].state == EXITED) gone = &g_fibers[i];
        return fail(EMU_EDEADLOCK, gone,
                    "barrier divergence in kernel '%s': %d of %d threads of block " BFMT " wait at %s at %s:%d "
                    "(first: thread " TFMT ") but thread " TFMT " has exited without reaching it",
                    g_kname, g_nbar, g_n, BARGS, kBarName[first->kind], first->file, first->line, TARGS(first),
                    TARGS(gone));
    }
    int count = 0;
    for (int i = 0; i < g_n; ++i) {
        Fiber* f = &g_fibers[i];
        if (!same_site(f, first))
            return fail(EMU_EDEADLOCK, f,
                        "barrier divergence in kernel '%s', block " BFMT ": thread " TFMT " waits at %s at %s:%d "
                        "while thread " TFMT " waits at %s at %s:%d",
                        g_kname, BARGS, TARGS(first), kBarName[first->kind], first->file, first->line, TARGS(f),
                        kBarName[f->kind], f->file, f->line);
        count += f->pred;
    }
    uint64_t result = first->kind == 1 ? (uint64_t)count
                    : first->kind == 2 ? (uint64_t)(count == g_n)
                    : first->kind == 3 ? (uint64_t)(count > 0) : 0;
    for (int i = 0; i < g_n; ++i) {
        g_fibers[i].state = RUNNABLE;
        g_fibers[i].result = result;
        q_push((uint32_t)i);
    }
    g_nbar = 0;
    return 0;
}

// All lanes in `need` have arrived: check that they agree, compute every lane's result, wake them.
void warp_complete(Warp& w, uint32_t need, Fiber* self) {
    Fiber* base = &g_fibers[self->warp * 32];
    for (uint32_t m = need; m; m &= m - 1) {
        Fiber* g = &base[__builtin_ctz(m)];
        if (g->kind != self->kind || g->mask != self->mask)
            fiber_fail(EMU_EDEADLOCK,
                       "warp collective mismatch in kernel '%s', block " BFMT ": thread " TFMT " calls %s "
                       "(mask 0x%08x) at %s:%d while thread " TFMT " calls %s (mask 0x%08x) at %s:%d",
                       g_kname, BARGS, TARGS(self), kOpName[self->kind], self->mask, self->file, self->line,
                       TARGS(g), kOpName[g->kind], g->mask, g->file, g->line);
    }
    const int op = self->kind;
    uint64_t all = 0;           // ballot / reductions over the participating lanes
    switch (op) {
        case emu::W_BALLOT: case emu::W_ANY: case emu::W_ALL: case emu::W_UNI:
            for (uint32_t m = need; m; m &= m - 1) {
                int l = __builtin_ctz(m);
                if (base[l].value) all |= 1ull << l;
            }
            break;
        case emu::W_RED_ADD: case emu::W_RED_OR: case emu::W_RED_XOR:
            for (uint32_t m = need; m; m &= m - 1) {
                uint32_t v = (uint32_t)base[__builtin_ctz(m)].value;
                all = op == emu::W_RED_ADD ? (uint32_t)(all + v) : op == emu::W_RED_OR ? (all | v) : (all ^ v);
            }
            break;
        case emu::W_RED_AND: all = 0xffffffffull;
            for (uint32_t m = need; m; m &= m - 1) all &= (uint32_t)base[__builtin_ctz(m)].value;
            break;
        case emu::W_RED_MIN_U: case emu::W_RED_MAX_U: case emu::W_RED_MIN_I: case emu::W_RED_MAX_I: {
            bool first = true;
            for (uint32_t m = need; m; m &= m - 1) {
                uint32_t v = (uint32_t)base[__builtin_ctz(m)].value;
                uint32_t a = (uint32_t)all;
                bool take;
                if (op == emu::W_RED_MIN_U) take = v < a;
                else if (op == emu::W_RED_MAX_U) take = v > a;
                else if (op == emu::W_RED_MIN_I) take = (int32_t)v < (int32_t)a;
                else take = (int32_t)v > (int32_t)a;
                if (first || take) all = v;
                first = false;
            }
            break;
        }
        default: break;
    }
    for (uint32_t m = need; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        Fiber* g = &base[l];
        uint64_t r = 0;
        switch (op) {
            case emu::W_SHFL_IDX: case emu::W_SHFL_UP: case emu::W_SHFL_DOWN: case emu::W_SHFL_XOR: {
                int width = g->width;
                if (width < 1 || width > 32 || (width & (width - 1)))
                    fiber_fail(EMU_ETRAP, "%s at %s:%d: width %d is not a power of two in [1, 32] (kernel '%s')",
                               kOpName[op], g->file, g->line, width, g_kname);
                const int seg = l & ~(width - 1);
                int src;
                if (op == emu::W_SHFL_IDX) src = seg + (g->arg & (width - 1));
                else if (op == emu::W_SHFL_UP) src = (l - g->arg < seg) ? l : l - g->arg;
                else if (op == emu::W_SHFL_DOWN) src = (l + g->arg >= seg + width) ? l : l + g->arg;
                else { src = l ^ g->arg; if (src >= seg + width) src = l; }
                // Reading a lane that does not take part is undefined on a GPU: hand back poison.
                r = (src >= 0 && src < 32 && (need >> src & 1u)) ? base[src].value : ~0ull;
                break;
            }
            case emu::W_BALLOT: r = all; break;
            case emu::W_ANY: r = all != 0; break;
            case emu::W_ALL: r = all == need; break;
            case emu::W_UNI: r = all == 0 || all == need; break;
            case emu::W_MATCH_ANY:
                for (uint32_t k = need; k; k &= k - 1)
                    if (base[__builtin_ctz(k)].value == g->value) r |= 1ull << __builtin_ctz(k);
                break;
            case emu::W_MATCH_ALL: {
                bool same = true;
                for (uint32_t k = need; k; k &= k - 1) same = same && base[__builtin_ctz(k)].value == g->value;
                r = same ? ((uint64_t)need | (1ull << 32)) : 0;
                break;
            }
            case emu::W_SYNC: r = 0; break;
            default: r = all; break;
        }
        g->result = r;
        if (g != self) {
            g->state = RUNNABLE;
            --g_nwarpwait;
            q_push(g->linear);
        }
    }
    self->state = RUNNABLE;
    w.arrived &= ~need;
}

}  // namespace

// ------------------------------------------------------------------ entry points used by kernels
namespace emu {

int block_barrier(int kind, int pred, const char* file, int line) {
    Fiber* f = g_curf;
    f->state = AT_BARRIER;
    f->kind = kind;
    f->pred = pred;
    f->file = file;
    f->line = line;
    ++g_nbar;
    to_scheduler(f);
    return (int)f->result;
}

unsigned long long warp_op(int op, unsigned mask, unsigned long long value, int arg, int width,
                           const char* file, int line) {
    Fiber* f = g_curf;
    Warp& w = g_warps[f->warp];
    const uint32_t bit = 1u << f->lane;
    if (!(mask & bit))
        fiber_fail(EMU_ETRAP,
                   "%s at %s:%d in kernel '%s': thread " TFMT " of block " BFMT " (lane %u) is not in its own "
                   "mask 0x%08x (undefined behaviour on a GPU)",
                   kOpName[op], file, line, g_kname, TARGS(f), BARGS, f->lane, mask);
    const uint32_t need = mask & w.exists;
    if (need & w.exited) {
        const Fiber* gone = &g_fibers[f->warp * 32 + __builtin_ctz(need & w.exited)];
        fiber_fail(EMU_EDEADLOCK,
                   "warp collective deadlock in kernel '%s': %s (mask 0x%08x) at %s:%d in thread " TFMT
                   " of block " BFMT " names lane %u (thread " TFMT ") which has already exited",
                   g_kname, kOpName[op], mask, file, line, TARGS(f), BARGS, gone->lane, TARGS(gone));
    }
    f->state = AT_WARP;
    f->kind = op;
    f->mask = mask;
    f->value = value;
    f->arg = arg;
    f->width = width;
    f->file = file;
    f->line = line;
    w.arrived |= bit;
    if ((w.arrived & need) != need) {
        ++g_nwarpwait;
        to_scheduler(f);
        return f->result;
    }
    warp_complete(w, need, f);
    if (g_random) {             // let the seeded schedule decide who continues first
        q_push(f->linear);
        to_scheduler(f);
    }
    return f->result;
}

unsigned active_mask() {
    Fiber* f = g_curf;
    f->state = AT_ACTIVEMASK;
    ++g_nactive;
    to_scheduler(f);
    return (unsigned)f->result;
}

void yield_now() {
    Fiber* f = g_curf;
    q_push(f->linear);
    to_scheduler(f);
}

void trap(const char* what, const char* file, int line) {
    fiber_fail(EMU_ETRAP, "%s at %s:%d in kernel '%s', thread " TFMT " of block " BFMT, what, file, line,
               g_kname, TARGS(g_curf), BARGS);
}

unsigned long long clock_tick() { return ++g_clock; }

}  // namespace emu

// ------------------------------------------------------------------ memory for fibers and shared memory
namespace {

size_t page_size() {
    if (!g_page) g_page = (size_t)sysconf(_SC_PAGESIZE);
    return g_page;
}

// Fibers for up to n threads, each with its own stack and a PROT_NONE guard page below it.
bool ensure_fibers(int n) {
    if (n <= g_cap) return true;
    int cap = 32;
    while (cap < n) cap *= 2;
    const size_t pg = page_size();
    if (!g_stack_bytes) {
        const char* kb = getenv("GPUNET_EMU_STACK_KB");
        size_t want = (kb && atoi(kb) > 0 ? (size_t)atoi(kb) : 64) * 1024;
        g_stack_bytes = (want + pg - 1) / pg * pg;
    }
    const size_t slot = g_stack_bytes + pg;
    const size_t len = slot * (size_t)cap;
    char* stacks = (char*)mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stacks == MAP_FAILED) return false;
    Fiber* fibers = (Fiber*)calloc((size_t)cap, sizeof(Fiber));
    uint32_t* q = (uint32_t*)calloc((size_t)cap, sizeof(uint32_t));
    if (!fibers || !q) { free(fibers); free(q); munmap(stacks, len); return false; }
    for (int i = 0; i < cap; ++i) {
        char* s = stacks + slot * (size_t)i;
        mprotect(s, pg, PROT_NONE);
        fibers[i].stack_lo = s + pg;
    }
    if (g_stacks) munmap(g_stacks, g_stacks_len);
    free(g_fibers);
    free(g_q);
    g_stacks = stacks;
    g_stacks_len = len;
    g_slot_bytes = slot;
    g_fibers = fibers;
    g_q = q;
    g_cap = cap;
    return true;
}

// Dynamic shared memory: an arena whose end touches a guard page; a launch uses its last bytes.
bool ensure_dyn(size_t bytes) {
    const size_t pg = page_size();
    const size_t need = (bytes + pg - 1) / pg * pg;
    if (g_dyn_region && need <= g_dyn_cap) return true;
    size_t cap = need < 256 * 1024 ? 256 * 1024 : need;
    char* r = (char*)mmap(nullptr, cap + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) return false;
    mprotect(r + cap, pg, PROT_NONE);
    if (g_dyn_region) munmap(g_dyn_region, g_dyn_cap + pg);
    g_dyn_region = r;
    g_dyn_cap = cap;
    g_dyn_end = r + cap;
    return true;
}

// ------------------------------------------------------------------ crash containment
const int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT};
constexpr int kNSignals = sizeof kSignals / sizeof kSignals[0];
struct sigaction g_old_act[kNSignals];
stack_t g_old_ss;
char* g_altstack;
constexpr size_t kAltStack = 64 * 1024;
volatile sig_atomic_t g_in_launch;
pthread_t g_launch_thread;
sigjmp_buf g_jmp;
volatile int g_crash_sig;
void* volatile g_crash_addr;
void* volatile g_crash_pc;
Fiber* volatile g_crash_fiber;

void on_signal(int sig, siginfo_t* si, void* ctx) {
    if (!g_in_launch || !pthread_equal(pthread_self(), g_launch_thread)) {
        // Not a fault of our launch: hand it back to whoever had it (a synchronous fault re-triggers).
        for (int i = 0; i < kNSignals; ++i)
            if (kSignals[i] == sig) sigaction(sig, &g_old_act[i], nullptr);
        return;
    }
    g_crash_sig = sig;
    g_crash_addr = si ? si->si_addr : nullptr;
    void* pc = nullptr;
#if defined(__x86_64__)
    pc = (void*)((ucontext_t*)ctx)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    pc = (void*)((ucontext_t*)ctx)->uc_mcontext.pc;
#endif
    g_crash_pc = pc;
    g_crash_fiber = g_in_fiber ? g_curf : nullptr;
    g_in_launch = 0;
    siglongjmp(g_jmp, 1);
}

void install_handlers() {
    if (!g_altstack) {
        g_altstack = (char*)mmap(nullptr, kAltStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (g_altstack == MAP_FAILED) g_altstack = nullptr;
    }
    if (g_altstack) {
        stack_t ss;
        ss.ss_sp = g_altstack;
        ss.ss_size = kAltStack;
        ss.ss_flags = 0;
        sigaltstack(&ss, &g_old_ss);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < kNSignals; ++i) sigaction(kSignals[i], &sa, &g_old_act[i]);
}

void restore_handlers() {
    for (int i = 0; i < kNSignals; ++i) sigaction(kSignals[i], &g_old_act[i], nullptr);
    if (g_altstack) sigaltstack(&g_old_ss, nullptr);
}

void report_crash() {
    EmuResult* r = g_res;
    const Fiber* f = g_crash_fiber;
    r->signo = g_crash_sig;
    r->fault_addr = (uint64_t)(uintptr_t)g_crash_addr;
    r->fault_pc = (uint64_t)(uintptr_t)g_crash_pc;
    Dl_info self, at;
    if (dladdr((void*)&report_crash, &self) && g_crash_pc && dladdr(g_crash_pc, &at)) {
        if (at.dli_fbase == self.dli_fbase) {
            r->in_module = 1;
            r->pc_offset = (uint64_t)((char*)g_crash_pc - (char*)self.dli_fbase);
        } else {
            snprintf(r->where, sizeof r->where, "%s in %s", at.dli_sname ? at.dli_sname : "?",
                     at.dli_fname ? at.dli_fname : "?");
        }
    }
    const char* what = "invalid memory access";
    char extra[256] = "";
    const char* a = (const char*)g_crash_addr;
    if (g_crash_sig == SIGFPE) what = "arithmetic exception (integer division by zero?)";
    else if (g_crash_sig == SIGILL || g_crash_sig == SIGTRAP) what = "illegal instruction / trap";
    else if (g_crash_sig == SIGABRT) what = "abort()";
    else if (g_stacks && a >= g_stacks && a < g_stacks + g_stacks_len &&
             (size_t)(a - g_stacks) % g_slot_bytes < page_size()) {
        what = "fiber stack overflow";
        snprintf(extra, sizeof extra, " (each thread has a %zu KiB stack: set GPUNET_EMU_STACK_KB to raise it)",
                 g_stack_bytes / 1024);
    } else if (g_dyn_region && a >= g_dyn_end && a < g_dyn_end + page_size()) {
        what = "out-of-bounds access past the end of dynamic shared memory";
        snprintf(extra, sizeof extra, " (shared_mem=%zu bytes)", (size_t)(g_dyn_end - emu::dyn_smem));
    }
    g_abort = EMU_ECRASH;
    r->code = EMU_ECRASH;
    if (f) {
        r->has_thread = 1;
        r->block[0] = (int)emu::g_blockIdx.x; r->block[1] = (int)emu::g_blockIdx.y; r->block[2] = (int)emu::g_blockIdx.z;
        r->thread[0] = (int)f->ts.tid.x; r->thread[1] = (int)f->ts.tid.y; r->thread[2] = (int)f->ts.tid.z;
        snprintf(r->msg, sizeof r->msg, "kernel '%s' crashed: %s (signal %d) at address %p in thread " TFMT
                 " of block " BFMT "%s", g_kname, what, g_crash_sig, g_crash_addr, TARGS(f), BARGS, extra);
    } else {
        snprintf(r->msg, sizeof r->msg, "kernel '%s' crashed: %s (signal %d) at address %p outside kernel code%s",
                 g_kname, what, g_crash_sig, g_crash_addr, extra);
    }
}

// ------------------------------------------------------------------ the launch
int run_block() {
    const int n = g_n;
    g_qhead = g_qtail = 0;
    g_nexited = g_nbar = g_nwarpwait = g_nactive = 0;
    for (int w = 0; w < (n + 31) / 32; ++w) {
        g_warps[w].arrived = 0;
        g_warps[w].exited = 0;
    }
    for (int i = 0; i < n; ++i) {
        Fiber* f = &g_fibers[i];
        f->state = RUNNABLE;
        fiber_reset(f);
        q_push((uint32_t)i);
    }
    for (;;) {
        if (q_empty()) {
            if (g_nexited == n) return 0;
            if (int rc = resolve()) return rc;
            continue;
        }
        resume(&g_fibers[q_pop()]);
        if (g_abort) return g_abort;
    }
}

uint64_t gcd(uint64_t a, uint64_t b) {
    while (b) { uint64_t t = a % b; a = b; b = t; }
    return a;
}

int launch(void* tramp, const uint32_t* grid, const uint32_t* block, uint64_t shmem, void** args,
           uint64_t seed, int use_seed, const char* kname) {
    const uint64_t n64 = (uint64_t)block[0] * block[1] * block[2];
    if (!block[0] || !block[1] || !block[2] || !grid[0] || !grid[1] || !grid[2] || n64 > 1024)
        return fail(EMU_ELAUNCH, nullptr, "invalid launch configuration for kernel '%s'", kname);
    const int n = (int)n64;
    if (!ensure_fibers(n) || !ensure_dyn(shmem))
        return fail(EMU_EINTERNAL, nullptr, "emulator: cannot allocate fiber stacks / shared memory (%s)",
                    strerror(errno));
    g_n = n;
    g_tramp = (void (*)(void**))tramp;
    g_args = args;
    g_kname = kname;
    g_random = use_seed != 0;
    emu::g_blockDim = dim3(block[0], block[1], block[2]);
    emu::g_gridDim = dim3(grid[0], grid[1], grid[2]);
    emu::dyn_smem = g_dyn_end - ((shmem + 15) & ~(uint64_t)15);
    for (int i = 0; i < n; ++i) {
        Fiber* f = &g_fibers[i];
        f->linear = (uint32_t)i;
        f->lane = (uint32_t)i % 32;
        f->warp = (uint32_t)i / 32;
        f->ts.tid.x = (unsigned)i % block[0];
        f->ts.tid.y = (unsigned)(i / block[0]) % block[1];
        f->ts.tid.z = (unsigned)(i / (block[0] * block[1]));
    }
    for (int w = 0; w < (n + 31) / 32; ++w) {
        int lanes = n - 32 * w < 32 ? n - 32 * w : 32;
        g_warps[w].exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    }
    const uint64_t nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
    // Seeded runs also visit the blocks in a pseudo-random order: b -> (a*b + c) mod nblocks.
    uint64_t pa = 1, pc = 0;
    g_rng = seed;
    if (g_random && nblocks > 1) {
        pa = splitmix(g_rng) % nblocks;
        while (gcd(pa, nblocks) != 1) pa = (pa + 1) % nblocks;
        pc = splitmix(g_rng) % nblocks;
    }
    for (uint64_t b = 0; b < nblocks && !g_abort; ++b) {
        uint64_t idx = (uint64_t)(((unsigned __int128)pa * b + pc) % nblocks);
        emu::g_blockIdx.x = (unsigned)(idx % grid[0]);
        emu::g_blockIdx.y = (unsigned)((idx / grid[0]) % grid[1]);
        emu::g_blockIdx.z = (unsigned)(idx / ((uint64_t)grid[0] * grid[1]));
        for (int i = 0; i < g_nstatic; ++i) memset(g_static[i].p, 0xff, g_static[i].n);   // poison: NaN / -1
        if (shmem) memset(emu::dyn_smem, 0xff, shmem);
        run_block();
    }
    return g_abort;
}

}  // namespace

// ------------------------------------------------------------------ exported API (ctypes)
EMU_API int emu_abi_version() { return GPUNET_EMU_HEADER_VERSION; }

EMU_API uint64_t emu_static_shared_bytes() { return g_static_bytes; }

// The static __shared__ variables of this module, as offsets from its load address.
EMU_API int emu_set_static_shared(const uint64_t* offsets, const uint64_t* sizes, int n) {
    Dl_info self;
    if (!dladdr((void*)&page_size, &self)) return -1;
    Range* r = (Range*)calloc(n > 0 ? (size_t)n : 1, sizeof(Range));
    if (!r) return -1;
    size_t total = 0;
    for (int i = 0; i < n; ++i) {
        r[i].p = (char*)self.dli_fbase + offsets[i];
        r[i].n = (size_t)sizes[i];
        total += r[i].n;
    }
    free(g_static);
    g_static = r;
    g_nstatic = n;
    g_static_bytes = total;
    return 0;
}

EMU_API int emu_launch(void* tramp, const uint32_t* grid, const uint32_t* block, uint64_t shmem, void** args,
                       uint64_t seed, int use_seed, const char* kname, EmuResult* res) {
    memset(res, 0, sizeof *res);
    g_res = res;
    g_abort = 0;
    g_curf = nullptr;
    g_in_fiber = false;
    g_launch_thread = pthread_self();
    install_handlers();
    if (sigsetjmp(g_jmp, 1) == 0) {
        g_in_launch = 1;
        launch(tramp, grid, block, shmem, args, seed, use_seed, kname);
        g_in_launch = 0;
    } else {
        report_crash();
    }
    g_in_fiber = false;
    restore_handlers();
    fflush(stdout);             // device printf output appears when the launch returns, as after a sync
    return res->code;
}

// Check mode: run the launch in a forked child. Arguments must live in MAP_SHARED memory
// (emu_guarded_alloc) for the kernel's writes to come back; a crash or a hang only kills the child.
EMU_API int emu_launch_forked(void* tramp, const uint32_t* grid, const uint32_t* block, uint64_t shmem,
                              void** args, uint64_t seed, int use_seed, const char* kname, EmuResult* res,
                              int timeout_s) {
    memset(res, 0, sizeof *res);
    static EmuResult* shared = nullptr;
    if (!shared) {
        void* p = mmap(nullptr, sizeof(EmuResult), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            snprintf(res->msg, sizeof res->msg, "emulator: mmap failed: %s", strerror(errno));
            return res->code = EMU_EINTERNAL;
        }
        shared = (EmuResult*)p;
    }
    const uint64_t n = (uint64_t)block[0] * block[1] * block[2];
    if (n >= 1 && n <= 1024 && (!ensure_fibers((int)n) || !ensure_dyn(shmem))) {  // allocate before fork
        snprintf(res->msg, sizeof res->msg, "emulator: cannot allocate fiber stacks: %s", strerror(errno));
        return res->code = EMU_EINTERNAL;
    }
    memset(shared, 0, sizeof *shared);
    fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(res->msg, sizeof res->msg, "emulator: fork failed: %s", strerror(errno));
        return res->code = EMU_EINTERNAL;
    }
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        if (timeout_s > 0) alarm((unsigned)timeout_s);
        int rc = emu_launch(tramp, grid, block, shmem, args, seed, use_seed, kname, shared);
        fflush(nullptr);
        _exit(rc);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            snprintf(res->msg, sizeof res->msg, "emulator: waitpid failed: %s", strerror(errno));
            return res->code = EMU_EINTERNAL;
        }
    }
    if (WIFEXITED(st)) {
        memcpy(res, shared, sizeof *res);
        if (res->code != WEXITSTATUS(st) && res->code == 0) {
            res->code = EMU_EINTERNAL;
            snprintf(res->msg, sizeof res->msg, "kernel '%s': launch process exited with status %d", kname,
                     WEXITSTATUS(st));
        }
        return res->code;
    }
    const int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    res->signo = sig;
    if (sig == SIGALRM) {
        res->code = EMU_ETIMEOUT;
        snprintf(res->msg, sizeof res->msg, "kernel '%s' did not finish within %d s (infinite loop, or a spin "
                 "wait on memory that another thread of the same block writes?)", kname, timeout_s);
    } else {
        res->code = EMU_ECRASH;
        snprintf(res->msg, sizeof res->msg, "kernel '%s' killed the launch process with signal %d (%s)", kname,
                 sig, strsignal(sig));
    }
    return res->code;
}

// Check-mode argument buffers: MAP_SHARED pages with a PROT_NONE page on either side, the data placed
// so that it ends exactly at the upper guard page (any overrun faults at once).
EMU_API void* emu_guarded_alloc(uint64_t nbytes, void** base_out, uint64_t* len_out) {
    const size_t pg = page_size();
    const size_t data = (nbytes + pg - 1) / pg * pg;
    const size_t len = data + 2 * pg;
    char* base = (char*)mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    mprotect(base, pg, PROT_NONE);
    mprotect(base + pg + data, pg, PROT_NONE);
    *base_out = base;
    *len_out = len;
    return base + pg + data - nbytes;
}

EMU_API int emu_guarded_readonly(void* base, uint64_t len, int readonly) {
    const size_t pg = page_size();
    if (len <= 2 * pg) return 0;
    return mprotect((char*)base + pg, len - 2 * pg, readonly ? PROT_READ : PROT_READ | PROT_WRITE);
}

EMU_API void emu_guarded_free(void* base, uint64_t len) { munmap(base, len); }
