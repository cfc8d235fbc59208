// Small kernels that exercise the CUDA emulator itself (tests/test_cuda_emulator.py): what it
// must compute (shuffles, barriers) and what it must report (divergence, deadlock, exited lanes).
#include "cuda_emulator.h"

#include <string>

namespace {

__global__ void shuffle_xor(int* out, int lane_mask) {
    const int lane = threadIdx.x & 31;
    const int v = 1000 * static_cast<int>(threadIdx.x >> 5) + lane;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, lane_mask);
}

// Every thread writes one value, then thread 0 adds the block's values in order.
__global__ void block_sum(const float* in, float* out) {
    __shared__ float s[256];
    s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
        float acc = 0.0f;
        for (unsigned i = 0; i < blockDim.x; ++i) acc += s[i];
        out[blockIdx.x] = acc;
    }
}

// Reads shared memory nobody in this block wrote (a previous block did).
__global__ void unwritten_shared(float* out) {
    __shared__ float s[4];
    if (blockIdx.x == 0 && threadIdx.x == 0) s[1] = 42.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = s[1];
}

__global__ void divergent_barrier() {
    if (threadIdx.x < 128) {
        __syncthreads();
    } else {
        __syncthreads();
    }
}

__global__ void shuffle_waits_on_a_block_barrier() {
    if ((threadIdx.x & 31) == 0) __syncthreads();
    else (void)__shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void lane_exits_before_shuffle(int* out) {
    if ((threadIdx.x & 31) == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// Thread 1 reads what thread 0 writes, with no barrier between: a race.
__global__ void racy_read(float* out) {
    __shared__ float s[1];
    if (threadIdx.x == 0) s[0] = 7.0f;
    if (threadIdx.x == 1) out[0] = s[0];
}

thread_local std::string g_error;

const char* result(const std::string& err) {
    g_error = err;
    return g_error.c_str();
}

}  // namespace

extern "C" {
const char* run_shuffle_xor(int* out, int lane_mask) {
    return result(cuda_emu::run_grid(1, 256, [&] { shuffle_xor(out, lane_mask); }));
}
const char* run_block_sum(const float* in, float* out, unsigned blocks) {
    return result(cuda_emu::run_grid(blocks, 256, [&] { block_sum(in, out); }));
}
const char* run_unwritten_shared(float* out) {
    return result(cuda_emu::run_grid(2, 64, [&] { unwritten_shared(out); }));
}
const char* run_divergent_barrier() { return result(cuda_emu::run_grid(1, 256, [] { divergent_barrier(); })); }
const char* run_deadlock() { return result(cuda_emu::run_grid(1, 64, [] { shuffle_waits_on_a_block_barrier(); })); }
const char* run_lane_exit(int* out) {
    return result(cuda_emu::run_grid(1, 64, [&] { lane_exits_before_shuffle(out); }));
}
const char* run_racy_read(float* out, unsigned long long seed) {
    cuda_emu::set_schedule_seed(seed);
    const std::string err = cuda_emu::run_grid(1, 64, [&] { racy_read(out); });
    cuda_emu::set_schedule_seed(1);
    return result(err);
}
}
