// A CPU emulation of the CUDA execution model, so that kernels/*.cu run (and are tested) where
// there is no GPU: CI and the development machine.
//
// What it models, and how:
// * Every CUDA thread of a block is a fiber (its own stack, cooperative switching on one OS
//   thread); blocks run one after another. threadIdx / blockIdx / blockDim / gridDim are set
//   for the running fiber.
// * __syncthreads() is a real barrier over the block's live threads. A barrier reached from two
//   different call sites in one phase is reported (CUDA: undefined behaviour, usually a hang).
// * __shfl_xor_sync() exchanges values between the 32 lanes of a warp through a barrier over the
//   warp; only the full mask is supported, and a lane that exited before its warp's shuffle is
//   reported (CUDA: undefined result).
// * __shared__ variables are block-wide (static storage; the blocks are sequential); every block
//   sees them filled with NaN bytes first, so reading shared memory that this block did not write
//   poisons the result instead of silently reusing the previous block's values.
// * Threads run until they block, in a shuffled order every round (seeded: set_schedule_seed),
//   so that a read of another thread's write without a barrier between them changes with the seed.
// * A deadlock (every live thread waiting, none can go on) is reported, not hung on.
// What it does not model: memory ordering between blocks, warp-synchronous code without
// barriers, timing, and the GPU's own rounding of expf (correctly rounded here, 2 ulp there).
//
// Errors do not abort: the launch stops, and cudaGetLastError() / prn_emu_error() return it.
#ifndef PRN_CUDA_EMULATOR_H
#define PRN_CUDA_EMULATOR_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>
#include <string>
#include <vector>

#if !defined(__x86_64__) || defined(PRN_EMU_UCONTEXT)
#define PRN_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

#define PRN_CPU_EMULATION 1

// ---- CUDA keywords as plain C++ ------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Shared memory: block-wide static storage (the blocks run one at a time), gathered by the
// linker script shared_memory.ld between two symbols so that it can be poisoned before every
// block (template functions' arrays must live in namespace prn: see the script).
#define __shared__ static __attribute__((section("prn_emu_shared"), used))

// ---- vector types and built-in variables ---------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }

// ---- the runtime API subset the host launchers use -----------------------------------------
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
typedef struct CUstream_st* cudaStream_t;

namespace cuda_emu {

// IEEE binary16 <-> binary32, bit-exact with PTX cvt.f32.f16 and cvt.rn.f16.f32 (round to
// nearest even, subnormals kept, overflow to infinity; NaN becomes the canonical 0x7fff).
inline float half_to_float(unsigned short h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
        std::memcpy(&bits, &mag, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline unsigned short float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                                     // NaN
    if (ax >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65520: inf
    if (ax < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), step 2^-24
        // Adding 0.5 moves the value's bits so that the FPU's own round-to-nearest-even lands
        // the 2^-24 quantum in the low mantissa bits.
        float mag;
        std::memcpy(&mag, &ax, 4);
        const float shifted = mag + 0.5f;
        uint32_t s;
        std::memcpy(&s, &shifted, 4);
        return static_cast<unsigned short>(sign | (s - 0x3f000000u));
    }
    // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
    const uint32_t odd = (ax >> 13) & 1u;
    const uint32_t r = ax + 0xc8000fffu + odd;  // -(112 << 23) + 0xfff, modulo 2^32
    return static_cast<unsigned short>(sign | (r >> 13));
}

// ---- fibers --------------------------------------------------------------------------------
#ifndef PRN_EMU_USE_UCONTEXT
// Callee-saved registers of the x86-64 System V ABI, then the stack pointer: enough to switch
// between fibers that only ever call each other through emu_switch (a plain function call).
extern "C" void prn_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl prn_emu_switch
    .type prn_emu_switch, @function
prn_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size prn_emu_switch, .-prn_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
#endif

enum class Wait { none, block, warp };

struct Fiber {
    std::vector<unsigned char> stack;
#ifdef PRN_EMU_USE_UCONTEXT
    ucontext_t ctx;
#else
    void* sp = nullptr;
#endif
    bool done = false;
    Wait wait = Wait::none;
    unsigned wait_gen = 0;  // the barrier generation this fiber waits to see pass
    unsigned shuffles = 0;  // shuffles this lane has done: picks the exchange buffer
};

struct Barrier {
    unsigned arrived = 0, gen = 0;
    const char* site = nullptr;  // call site ("file:line") of the first arrival in this phase
};

struct Block {
    std::vector<Fiber> fibers;
    unsigned threads = 0, live = 0, current = 0;
    Barrier block;
    std::vector<Barrier> warps;
    std::vector<unsigned> warp_live;
    std::vector<uint32_t> exchange;  // [warp][2][32] 32-bit words
#ifdef PRN_EMU_USE_UCONTEXT
    ucontext_t scheduler;
#else
    void* scheduler_sp = nullptr;
#endif
    std::function<void()> body;
    std::string error;
    std::vector<unsigned> order;  // the run order of the threads in the current round
    std::vector<char> slow;       // per warp: runs only when no fast thread can
    uint64_t seed = 1, rng = 1;   // seed 0: threads in index order, every round
};

inline Block& state() {
    static Block b;
    return b;
}

// Bounds of every __shared__ array, set by shared_memory.ld (link with -Wl,-T,shared_memory.ld).
extern "C" unsigned char __prn_emu_shared_begin[];
extern "C" unsigned char __prn_emu_shared_end[];

inline void fail(const std::string& why) {
    Block& b = state();
    if (b.error.empty()) {
        b.error = why + " (block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + " thread " +
                  std::to_string(threadIdx.x) + ")";
    }
}

inline void to_scheduler() {
    Block& b = state();
    Fiber& f = b.fibers[b.current];
#ifdef PRN_EMU_USE_UCONTEXT
    swapcontext(&f.ctx, &b.scheduler);
#else
    prn_emu_switch(&f.sp, b.scheduler_sp);
#endif
}

// After an error: this thread stops here for good (the scheduler resumes nobody once an error is set).
inline void abandon_thread() {
    for (;;) to_scheduler();
}

// Block until `bar` has released the phase this fiber arrived in.
inline void arrive(Barrier& bar, unsigned expected, Wait kind, const char* site) {
    Block& b = state();
    Fiber& f = b.fibers[b.current];
    if (bar.arrived == 0) bar.site = site;
    else if (kind == Wait::block && std::strcmp(bar.site, site) != 0) {
        fail("__syncthreads reached from two different places in one phase (divergent barrier)");
        abandon_thread();
    }
    if (++bar.arrived == expected) {
        bar.arrived = 0;
        ++bar.gen;
        return;  // the last to arrive goes straight on
    }
    f.wait = kind;
    f.wait_gen = bar.gen;
    while (bar.gen == f.wait_gen) to_scheduler();  // never resumed once an error is set
    f.wait = Wait::none;
}

inline void thread_exit() {
    Block& b = state();
    b.fibers[b.current].done = true;
    --b.live;
    const unsigned warp = b.current / 32;
    --b.warp_live[warp];
    // The barrier no longer waits for this thread.
    if (b.block.arrived > 0 && b.block.arrived == b.live) { b.block.arrived = 0; ++b.block.gen; }
    if (b.warps[warp].arrived > 0) fail("a lane exited while its warp waits in a shuffle");
}

#ifdef PRN_EMU_USE_UCONTEXT
inline void fiber_entry() {
    state().body();
    thread_exit();
}  // returns to uc_link: the scheduler
#else
[[noreturn]] inline void fiber_entry() {
    state().body();
    thread_exit();
    Block& b = state();
    void* dead = nullptr;
    prn_emu_switch(&dead, b.scheduler_sp);
    std::abort();  // never resumed
}
#endif

constexpr size_t kStackBytes = 64 * 1024;

inline void start_fiber(Block& b, unsigned t) {
    Fiber& f = b.fibers[t];
    if (f.stack.size() != kStackBytes) f.stack.assign(kStackBytes, 0);
    f.done = false;
    f.wait = Wait::none;
    f.shuffles = 0;
#ifdef PRN_EMU_USE_UCONTEXT
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &b.scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
#else
    // The initial frame prn_emu_switch pops: mxcsr/x87 control words, six registers, then the
    // address it "returns" to; the entry then sees the stack as after a call (rsp = 8 mod 16).
    uintptr_t top = reinterpret_cast<uintptr_t>(f.stack.data() + f.stack.size()) & ~static_cast<uintptr_t>(15);
    auto* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                               // fake return address of fiber_entry
    *--sp = reinterpret_cast<uint64_t>(&fiber_entry);        // where `ret` goes
    for (int i = 0; i < 6; ++i) *--sp = 0;                   // rbp rbx r12 r13 r14 r15
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    *--sp = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
    f.sp = sp;
#endif
}

inline void resume(Block& b, unsigned t) {
    b.current = t;
    threadIdx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    Fiber& f = b.fibers[t];
#ifdef PRN_EMU_USE_UCONTEXT
    swapcontext(&b.scheduler, &f.ctx);
#else
    prn_emu_switch(&b.scheduler_sp, f.sp);
#endif
}

inline bool runnable(const Block& b, const Fiber& f, unsigned t) {
    if (f.done) return false;
    if (f.wait == Wait::block) return b.block.gen != f.wait_gen;
    if (f.wait == Wait::warp) return b.warps[t / 32].gen != f.wait_gen;
    return true;
}

inline uint64_t next_random(uint64_t& rng) {  // xorshift64
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

// A different order of the threads in every scheduling round: code that reads what another
// thread writes without a barrier in between sees a different value from run to run.
inline void shuffle(std::vector<unsigned>& v, uint64_t& rng) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_random(rng) % i]);
}

// One scheduling round over the threads of `order` that are runnable and whose warp is (or is
// not) slow; returns whether any ran.
inline bool run_round(Block& b, const std::vector<unsigned>& order, bool slow) {
    bool ran = false;
    for (unsigned i = 0; i < b.threads && b.error.empty(); ++i) {
        const unsigned t = order[i];
        if (b.slow[t / 32] != slow || !runnable(b, b.fibers[t], t)) continue;
        ran = true;
        resume(b, t);
    }
    return ran;
}

inline void run_block(Block& b) {
    // NaN bytes: shared memory this block did not write poisons the result.
    std::memset(__prn_emu_shared_begin, 0xff, static_cast<size_t>(__prn_emu_shared_end - __prn_emu_shared_begin));
    b.live = b.threads;
    for (unsigned w = 0; w < b.warps.size(); ++w) {
        b.warps[w] = Barrier{};
        b.warp_live[w] = std::min(32u, b.threads - 32 * w);
        // About half the warps of each block are slow: they run only when no other thread can,
        // so the fast warps get as far ahead as the barriers allow (a reader in a slow warp then
        // sees a fast warp's next write if no barrier stands between them).
        b.slow[w] = b.seed != 0 && (next_random(b.rng) & 1u);
    }
    b.block = Barrier{};
    for (unsigned t = 0; t < b.threads; ++t) start_fiber(b, t);
    std::vector<unsigned>& order = b.order;
    order.resize(b.threads);
    for (unsigned t = 0; t < b.threads; ++t) order[t] = t;
    while (b.live > 0 && b.error.empty()) {
        if (b.seed != 0) shuffle(order, b.rng);
        if (run_round(b, order, false)) continue;
        if (run_round(b, order, true)) continue;
        if (b.error.empty()) fail("deadlock: every live thread waits at a barrier that cannot complete");
    }
}

// Run kernel `body` (a closure over its arguments) on a grid; returns "" or the first error.
inline std::string run_grid(dim3 grid, dim3 block, std::function<void()> body) {
    Block& b = state();
    b.error.clear();
    const unsigned long long threads = 1ULL * block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) return "invalid block size " + std::to_string(threads);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        return "invalid grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
               std::to_string(grid.z);
    b.threads = static_cast<unsigned>(threads);
    b.fibers.resize(b.threads);
    const unsigned warps = (b.threads + 31) / 32;
    b.warps.assign(warps, Barrier{});
    b.warp_live.assign(warps, 0);
    b.slow.assign(warps, 0);
    b.exchange.assign(warps * 64, 0);
    b.body = std::move(body);
    b.rng = b.seed * 0x9e3779b97f4a7c15ULL + 1;
    blockDim = block;
    gridDim = grid;
    for (unsigned z = 0; z < grid.z && b.error.empty(); ++z)
        for (unsigned y = 0; y < grid.y && b.error.empty(); ++y)
            for (unsigned x = 0; x < grid.x && b.error.empty(); ++x) {
                blockIdx = {x, y, z};
                run_block(b);
            }
    b.body = nullptr;
    return b.error;
}

inline void set_schedule_seed(uint64_t seed) { state().seed = seed; }

}  // namespace cuda_emu

// ---- device built-ins that need the fibers ---------------------------------------------------
// The call site (file:line) identifies the barrier, to catch divergent __syncthreads.
#define __syncthreads() ::cuda_emu::syncthreads_at(__FILE__ ":" PRN_EMU_LINE)
#define PRN_EMU_STR2(x) #x
#define PRN_EMU_STR(x) PRN_EMU_STR2(x)
#define PRN_EMU_LINE PRN_EMU_STR(__LINE__)

namespace cuda_emu {

inline void syncthreads_at(const char* site) {
    Block& b = state();
    arrive(b.block, b.live, Wait::block, site);
}

template <typename T>
inline T shfl_xor(unsigned mask, T value, int lane_mask, int width) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    Block& b = state();
    const unsigned t = b.current, warp = t / 32, lane = t % 32;
    if (mask != 0xffffffffu || width != 32) {
        fail("only full-warp shuffles (mask 0xffffffff, width 32) are emulated");
        abandon_thread();
    }
    if (b.warp_live[warp] != 32) {
        fail("__shfl_xor_sync with exited lanes in the warp");
        abandon_thread();
    }
    Fiber& f = b.fibers[t];
    uint32_t* slots = &b.exchange[(warp * 2 + (f.shuffles++ & 1u)) * 32];
    std::memcpy(&slots[lane], &value, 4);
    arrive(b.warps[warp], 32, Wait::warp, nullptr);
    // Two buffers in turn: a lane can only reuse one after every lane has passed the next barrier.
    T out;
    std::memcpy(&out, &slots[(lane ^ static_cast<unsigned>(lane_mask)) & 31u], 4);
    return out;
}

}  // namespace cuda_emu

namespace cuda_emu {

inline std::string& last_error() {
    static std::string e;
    return e;
}

// What PRN_LAUNCH(kernel, grid, block, stream)(args...) becomes: run the grid now (the emulated
// stream is synchronous) and keep the first error for cudaGetLastError().
template <typename... P>
struct Launch {
    void (*kernel)(P...);
    dim3 grid, block;
    template <typename... A>
    void operator()(A&&... args) const {
        std::string err = run_grid(grid, block, [&] { kernel(args...); });
        if (!err.empty() && last_error().empty()) last_error() = err;
    }
};
template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block) { return {kernel, grid, block}; }

}  // namespace cuda_emu

#define PRN_LAUNCH(kernel, grid, block, stream) ((void)(stream), ::cuda_emu::launch(kernel, grid, block))

inline cudaError_t cudaGetLastError() {
    const bool failed = !cuda_emu::last_error().empty();
    return failed ? cudaErrorLaunchFailure : cudaSuccess;  // the message stays for prn_emu_error()
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    return cuda_emu::shfl_xor(mask, value, lane_mask, width);
}

#endif  // PRN_CUDA_EMULATOR_H
