// Fused nearest-prototype residual (PRN's ProtoResidual), FP32 and FP16 storage, FP32 math.
//
// Reference: prn_edge.model.prototypes.prototype_residual. Per image b of F (B, D), D = C*H*W:
//   k*[b] = argmin_k ( ||P_k||^2 - 2 <F_b, P_k> )      (first k on ties, NaN wins like torch)
//   out[b] = |F_b - P_k*[b]|   (mode 0)   or   (F_b - P_k*[b])^2   (mode 1)
//
// The cost is reading the bank P (K, D): 300 x 262144 FP32 = 315 MB per call at scale 1,
// against 1 MB of features per image. So the design is a batched GEMV that streams the bank
// exactly once per batch and keeps everything else small:
//
// 1. prn_proto_dot_k<KT>_<T>, grid (slices, kblocks), 256 threads = 8 warps.
//    A warp owns KT prototypes (a "k-group") and a span of d; each lane loads 16 bytes of each
//    of its KT bank rows per iteration (KT x 16 B x 32 lanes = 4 KB per warp-iteration for
//    KT = 8, fully coalesced) and multiplies them with the same 16 bytes of every image of the
//    tile of BT = 32 / KT images (KT = 8, BT = 4 up to 4 images: more bank bytes in flight for
//    the bandwidth-bound batch 1; KT = 4, BT = 8 above; larger batches loop over tiles,
//    re-reading the warp's span from L1/L2, not DRAM). 32 FP32 sums per lane = KT x BT; one
//    warp "reduce-scatter" (31 shuffles) leaves sum number `lane` on lane `lane`. A block is
//    wk k-groups x wd spans of d (wk * wd = 8; wk = 8 when K >= 8 KT, fewer for small K so no
//    warp idles); the wd spans are added in shared memory in a fixed order. The block writes
//    its B x (KT wk) dot products of one d-slice to partial[slice][b][k] (slices x B x K
//    floats: about 1 % of the bank's bytes).
//    Bytes: K*D*sizeof(T) bank once + kblocks * B*D*sizeof(T) features (L2-resident) +
//    4*slices*B*K partials.
// 2. prn_proto_argmin, grid (B): dist[k] = sqnorm[k] - 2 * sum_s partial[s][b][k], summed
//    in slice order (deterministic: two identical bank rows get bit-identical distances, so
//    the tie goes to the lower k exactly like torch.argmin), then a block argmin.
// 3. prn_proto_residual_<T>, grid (ceil(D / 2048), B): 8 elements per thread, 16-byte
//    loads of F and of the chosen row, 16-byte stores. Bytes: 3 * B*D*sizeof(T).
//
// The three launches go to one stream; the TensorRT plugin and the CuPy loader issue the
// same sequence (see kernels/prn_plan.h for the grid and the workspace layout).
#include "prn_constants.h"
#include "prn_device.cuh"

namespace prn {

// After this, lane l holds the warp-wide sum of v[l] (31 shuffles instead of 32 x 5).
// Every value is summed over the lanes in the same tree, so equal inputs give equal sums.
template <int N>
__device__ __forceinline__ void reduce_scatter_step(float* v, int lane) {
    const bool upper = (lane & (N / 2)) != 0;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
        const float send = upper ? v[i] : v[i + N / 2];
        const float keep = upper ? v[i + N / 2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, N / 2);
    }
}
__device__ __forceinline__ float reduce_scatter32(float (&v)[32], int lane) {
    reduce_scatter_step<32>(v, lane);
    reduce_scatter_step<16>(v, lane);
    reduce_scatter_step<8>(v, lane);
    reduce_scatter_step<4>(v, lane);
    reduce_scatter_step<2>(v, lane);
    return v[0];
}

// One warp: acc[kt * BT + bt] += <F[b0 + bt][d0:d1], P[k0 + kt][d0:d1]>, V elements per lane
// per iteration (V = 16 bytes, or 1 on the scalar path for unaligned / odd-D inputs).
template <typename T, int V, int KT>
__device__ __forceinline__ void dot_span(const T* __restrict__ F, const T* __restrict__ P, int nb, int nk,
                                         long long D, long long d0, long long d1, int lane,
                                         float (&acc)[32]) {
    constexpr int BT = 32 / KT;
    for (long long d = d0 + static_cast<long long>(lane) * V; d < d1; d += 32LL * V) {
        float p[KT][V];
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            if (kt < nk) {
                load_vec(P + kt * D + d, p[kt]);
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) p[kt][v] = 0.0f;
            }
        }
#pragma unroll
        for (int bt = 0; bt < BT; ++bt) {
            if (bt < nb) {
                float f[V];
                load_vec(F + bt * D + d, f);
#pragma unroll
                for (int kt = 0; kt < KT; ++kt) {
#pragma unroll
                    for (int v = 0; v < V; ++v) acc[kt * BT + bt] = fmaf(p[kt][v], f[v], acc[kt * BT + bt]);
                }
            }
        }
    }
}

// FP16 bank, KT = 8 (small batches): the same sums, but the bank stays packed in registers
// (4 words per row instead of 8 floats) and is converted per image: 8 rows x 16 B in flight per
// lane at about 90 registers, i.e. two blocks per SM instead of one (the batch-1 case is a pure
// stream of the bank, so bytes in flight are what count).
template <int KT>
__device__ __forceinline__ void dot_span_packed(const half_t* __restrict__ F, const half_t* __restrict__ P, int nb,
                                                int nk, long long D, long long d0, long long d1, int lane,
                                                float (&acc)[32]) {
    constexpr int BT = 32 / KT;
    for (long long d = d0 + static_cast<long long>(lane) * 8; d < d1; d += 32LL * 8) {
        uint4 raw[KT];
#pragma unroll
        for (int kt = 0; kt < KT; ++kt)
            raw[kt] = kt < nk ? *reinterpret_cast<const uint4*>(P + kt * D + d) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int bt = 0; bt < BT; ++bt) {
            if (bt < nb) {
                float f[8];
                load_vec(F + bt * D + d, f);
#pragma unroll
                for (int kt = 0; kt < KT; ++kt) {
                    const unsigned int w[4] = {raw[kt].x, raw[kt].y, raw[kt].z, raw[kt].w};
                    float s = acc[kt * BT + bt];
#pragma unroll
                    for (int h = 0; h < 4; ++h) {
                        float p2[2];
                        unpack_half2(w[h], p2);
                        s = fmaf(p2[0], f[2 * h], s);
                        s = fmaf(p2[1], f[2 * h + 1], s);
                    }
                    acc[kt * BT + bt] = s;
                }
            }
        }
    }
}

template <typename T, int VEC, int KT>
__device__ __forceinline__ void dot_span_vec(const T* __restrict__ F, const T* __restrict__ P, int nb, int nk,
                                             long long D, long long d0, long long d1, int lane, float (&acc)[32]) {
    dot_span<T, VEC, KT>(F, P, nb, nk, D, d0, d1, lane, acc);
}
template <>
__device__ __forceinline__ void dot_span_vec<half_t, kProtoVecF16, kProtoKTSmall>(
    const half_t* __restrict__ F, const half_t* __restrict__ P, int nb, int nk, long long D, long long d0,
    long long d1, int lane, float (&acc)[32]) {
    dot_span_packed<kProtoKTSmall>(F, P, nb, nk, D, d0, d1, lane, acc);
}

template <typename T, int VEC, int KT>
__device__ __forceinline__ void proto_dot(const T* __restrict__ F, const T* __restrict__ P,
                                          float* __restrict__ partial, int B, int K, long long D, int wd,
                                          long long per_warp, int vec) {
    constexpr int BT = 32 / KT;
    static_assert(KT * BT == 32, "the warp reduce-scatter hands one sum to each lane");
    __shared__ float red[kWarps][32];
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int wk = kWarps / wd;
    const int kg_local = warp / wd;  // which k-group of the block
    const int dsub = warp % wd;      // which span of the block's d-slice
    const int k0 = (blockIdx.y * wk + kg_local) * KT;
    const int nk = min(KT, K - k0);  // <= 0: this warp has no prototypes (last k-block)
    const long long d0 = static_cast<long long>(blockIdx.x) * per_warp * wd + dsub * per_warp;
    const long long d1 = d0 + per_warp < D ? d0 + per_warp : D;
    // This lane's sum after the reduce-scatter: prototype k0 + lane / BT, image b0 + lane % BT.
    const int my_k = k0 + lane / BT;

    for (int b0 = 0; b0 < B; b0 += BT) {  // block-uniform: one pass while B <= BT
        const int nb = min(BT, B - b0);
        float acc[32];
#pragma unroll
        for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
        if (nk > 0 && d0 < d1) {
            const T* Fb = F + static_cast<long long>(b0) * D;
            const T* Pk = P + static_cast<long long>(k0) * D;
            if (vec == VEC) dot_span_vec<T, VEC, KT>(Fb, Pk, nb, nk, D, d0, d1, lane, acc);
            else            dot_span<T, 1, KT>(Fb, Pk, nb, nk, D, d0, d1, lane, acc);
        }
        float sum = reduce_scatter32(acc, lane);
        const int my_b = b0 + lane % BT;
        if (wd > 1) {  // add the wd spans of the k-group, in span order
            red[warp][lane] = sum;
            __syncthreads();
            if (dsub == 0) {
                sum = red[warp][lane];
                for (int i = 1; i < wd; ++i) sum += red[warp + i][lane];
            }
            __syncthreads();
        }
        if (dsub == 0 && my_k < K && my_b < B)
            partial[(static_cast<long long>(blockIdx.x) * B + my_b) * K + my_k] = sum;
    }
}

// NaN counts as smallest (torch.argmin propagates NaN), then the lower index wins ties.
__device__ __forceinline__ bool better(float a, int ka, float b, int kb) {
    const bool a_nan = a != a, b_nan = b != b;
    if (a_nan || b_nan) return a_nan && (!b_nan || ka < kb);
    return a < b || (a == b && ka < kb);
}

__device__ __forceinline__ void proto_argmin(const float* __restrict__ partial, const float* __restrict__ sqnorm,
                                             int* __restrict__ index, int B, int K, int slices) {
    __shared__ float best_v[kWarps];
    __shared__ int best_k[kWarps];
    const int b = blockIdx.x;
    float v = __int_as_float(0x7f800000);  // +inf
    int k_best = 0x7fffffff;
    for (int k = threadIdx.x; k < K; k += kThreads) {
        float dot = 0.0f;
        for (int s = 0; s < slices; ++s) dot += partial[(static_cast<long long>(s) * B + b) * K + k];
        const float dist = sqnorm[k] - 2.0f * dot;  // the reference's ||P||^2 - 2 F.P^T
        if (better(dist, k, v, k_best)) { v = dist; k_best = k; }
    }
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int ok = __shfl_xor_sync(0xffffffffu, k_best, off);
        if (better(ov, ok, v, k_best)) { v = ov; k_best = ok; }
    }
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) { best_v[warp] = v; best_k[warp] = k_best; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < kWarps; ++w)
            if (better(best_v[w], best_k[w], v, k_best)) { v = best_v[w]; k_best = best_k[w]; }
        index[b] = k_best;
    }
}

template <typename T, int V>
__device__ __forceinline__ void residual_op(const float (&f)[V], const float (&p)[V], int mode, float (&o)[V]) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
        // The reference subtracts in the storage type (rounded), then takes |.| or squares.
        const float diff = round_to<T>(f[i] - p[i]);
        o[i] = mode == 0 ? fabsf(diff) : diff * diff;
    }
}

// 2048 elements per block: 8 per thread, as two 16-byte vectors (FP32) or one (FP16).
template <typename T>
__device__ __forceinline__ void proto_residual(const T* __restrict__ F, const T* __restrict__ P,
                                               const int* __restrict__ index, T* __restrict__ out,
                                               long long D, int mode, int vec) {
    const int b = blockIdx.y;
    const T* Fb = F + static_cast<long long>(b) * D;
    const T* Pk = P + static_cast<long long>(index[b]) * D;
    T* Ob = out + static_cast<long long>(b) * D;
    const long long base = static_cast<long long>(blockIdx.x) * (kThreads * 8);
    if (vec) {
        const long long d = base + threadIdx.x * 8;
        if (d < D) {  // D % 8 == 0 on this path, so a vector is whole
            float f[8], p[8], o[8];
            load_vec(Fb + d, f);
            load_vec(Pk + d, p);
            residual_op<T, 8>(f, p, mode, o);
            store_vec(Ob + d, o);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const long long d = base + i * kThreads + threadIdx.x;
            if (d < D) {
                float f[1], p[1], o[1];
                load_vec(Fb + d, f);
                load_vec(Pk + d, p);
                residual_op<T, 1>(f, p, mode, o);
                store_vec(Ob + d, o);
            }
        }
    }
}

}  // namespace prn

// ---- entry points (extern "C": the names CuPy's RawModule and the plugin launch) ----------
#define PRN_PROTO_DOT(NAME, T, VEC, KT)                                                                 \
    extern "C" __global__ void __launch_bounds__(prn::kThreads, 2)                                      \
    NAME(const T* __restrict__ F, const T* __restrict__ P, float* __restrict__ partial, int B, int K,   \
         long long D, int wd, long long per_warp, int vec) {                                            \
        prn::proto_dot<T, VEC, KT>(F, P, partial, B, K, D, wd, per_warp, vec);                          \
    }
PRN_PROTO_DOT(prn_proto_dot_k8_f32, float, prn::kProtoVecF32, prn::kProtoKTSmall)
PRN_PROTO_DOT(prn_proto_dot_k4_f32, float, prn::kProtoVecF32, prn::kProtoKTLarge)
PRN_PROTO_DOT(prn_proto_dot_k8_f16, prn::half_t, prn::kProtoVecF16, prn::kProtoKTSmall)
PRN_PROTO_DOT(prn_proto_dot_k4_f16, prn::half_t, prn::kProtoVecF16, prn::kProtoKTLarge)
#undef PRN_PROTO_DOT
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_proto_argmin(const float* __restrict__ partial, const float* __restrict__ sqnorm, int* __restrict__ index,
                 int B, int K, int slices) {
    prn::proto_argmin(partial, sqnorm, index, B, K, slices);
}
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_proto_residual_f32(const float* __restrict__ F, const float* __restrict__ P, const int* __restrict__ index,
                       float* __restrict__ out, long long D, int mode, int vec) {
    prn::proto_residual<float>(F, P, index, out, D, mode, vec);
}
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_proto_residual_f16(const prn::half_t* __restrict__ F, const prn::half_t* __restrict__ P,
                       const int* __restrict__ index, prn::half_t* __restrict__ out, long long D, int mode,
                       int vec) {
    prn::proto_residual<prn::half_t>(F, P, index, out, D, mode, vec);
}

// ---- host launcher for the TensorRT plugin (not seen by NVRTC) -----------------------------
#ifndef __CUDACC_RTC__
#include <cstdint>

#include "prn_launch.h"
#include "prn_plan.h"

// Enough for every batch up to B (TensorRT asks once, for the profile's largest shapes).
extern "C" size_t prn_proto_residual_workspace(int B, int K, long long D, int dtype) {
    size_t bytes = 0;
    for (int b = 1; b <= B; ++b) {
        prn::ProtoPlan plan;
        if (!prn::proto_plan(b, K, D, dtype, true, &plan, nullptr)) return 0;
        if (plan.workspace_bytes > bytes) bytes = plan.workspace_bytes;
    }
    return bytes;
}

namespace {

// The kernels of one storage type T; the launch sequence below is the same for both.
template <typename T>
struct ProtoKernels {
    void (*dot_small_batch)(const T*, const T*, float*, int, int, long long, int, long long, int);  // KT = 8
    void (*dot_large_batch)(const T*, const T*, float*, int, int, long long, int, long long, int);  // KT = 4
    void (*residual)(const T*, const T*, const int*, T*, long long, int, int);
};

template <typename T>
void proto_launches(const ProtoKernels<T>& k, const prn::ProtoPlan& plan, const void* features, const void* bank,
                    const float* sqnorm, void* out, float* partial, int* index, int mode, cudaStream_t stream) {
    auto f = static_cast<const T*>(features);
    auto p = static_cast<const T*>(bank);
    const dim3 dot_grid(plan.slices, plan.kblocks);
    const dim3 res_grid(static_cast<unsigned>(prn::ceil_div(plan.D, prn::kThreads * 8)), plan.B);
    auto dot = plan.kt == prn::kProtoKTSmall ? k.dot_small_batch : k.dot_large_batch;
    PRN_LAUNCH(dot, dot_grid, prn::kThreads, stream)(f, p, partial, plan.B, plan.K, plan.D, plan.wd, plan.per_warp,
                                                     plan.vec);
    PRN_LAUNCH(prn_proto_argmin, plan.B, prn::kThreads, stream)(partial, sqnorm, index, plan.B, plan.K, plan.slices);
    PRN_LAUNCH(k.residual, res_grid, prn::kThreads, stream)(f, p, index, static_cast<T*>(out), plan.D, mode,
                                                            plan.residual_vec);
}

}  // namespace

extern "C" cudaError_t prn_proto_residual_enqueue(const void* features, const void* bank, const float* sqnorm,
                                                  void* out, void* workspace, size_t workspace_bytes, int B,
                                                  int K, long long D, int mode, int dtype, cudaStream_t stream) {
    const bool aligned = ((reinterpret_cast<uintptr_t>(features) | reinterpret_cast<uintptr_t>(bank) |
                           reinterpret_cast<uintptr_t>(out)) & 15u) == 0;
    prn::ProtoPlan plan;
    if (!prn::proto_plan(B, K, D, dtype, aligned, &plan, nullptr) || (mode != 0 && mode != 1) ||
        workspace == nullptr || workspace_bytes < plan.workspace_bytes)
        return cudaErrorInvalidValue;
    float* partial = static_cast<float*>(workspace);
    int* index = reinterpret_cast<int*>(static_cast<char*>(workspace) + plan.index_offset);
    if (dtype == prn::kF32)
        proto_launches<float>({prn_proto_dot_k8_f32, prn_proto_dot_k4_f32, prn_proto_residual_f32}, plan, features,
                              bank, sqnorm, out, partial, index, mode, stream);
    else if (dtype == prn::kF16)
        proto_launches<prn::half_t>({prn_proto_dot_k8_f16, prn_proto_dot_k4_f16, prn_proto_residual_f16}, plan,
                                    features, bank, sqnorm, out, partial, index, mode, stream);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}
#endif  // __CUDACC_RTC__
