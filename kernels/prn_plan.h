// Host-side launch plans of the fused kernels: grid shapes, split counts and workspace layout.
//
// Plain C++17, no CUDA header: used by the launchers in kernels/*.cu (TensorRT plugin path)
// and mirrored line for line by prn_edge/kernels/_plan.py (CuPy path); the test
// tests/test_kernels_compile.py compiles this header with g++ and checks that both agree.
// Every plan depends only on shapes and the element size, never on the device, so that a
// TensorRT plugin can size its workspace at build time (getWorkspaceSize) and find the same
// plan at run time (enqueue).
#ifndef PRN_PLAN_H
#define PRN_PLAN_H

#include <cstddef>
#include <cstdint>

#include "prn_constants.h"

namespace prn {

enum DType : int { kF32 = 0, kF16 = 1 };

inline int dtype_bytes(int dtype) { return dtype == kF16 ? 2 : 4; }
inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }
inline size_t align256(size_t bytes) { return (bytes + 255) & ~static_cast<size_t>(255); }
inline long long min_ll(long long a, long long b) { return a < b ? a : b; }
inline long long max_ll(long long a, long long b) { return a > b ? a : b; }

// ------------------------------------------------------------------------------------------
// proto_residual: three launches on one stream.
//   1. prn_proto_dot_k<KT>_<T> grid (slices, kblocks): partial[s][b][k] = <F_b, P_k> over slice s
//   2. prn_proto_argmin      grid (B):  index[b] = argmin_k sqnorm[k] - 2 * sum_s partial[s][b][k]
//   3. prn_proto_residual_<T> grid (ceil(D / 2048), B): out[b] = |F_b - P_index[b]| (or squared)
// Workspace: [partial: slices*B*K floats][pad to 256 B][index: B int32][pad to 256 B].
// ------------------------------------------------------------------------------------------
struct ProtoPlan {
    int B = 0, K = 0;
    long long D = 0;
    int vec = 1;             // dot kernel: elements per vector load (4 FP32 / 8 FP16 = 16 B); 1: scalar
    int residual_vec = 0;    // residual kernel: 1 = 8-element vectors (D % 8 == 0 and aligned)
    int kt = 0;              // prototypes per warp: 8 (B <= kProtoSmallBatch) or 4; images per tile 32 / kt
    int kgroups = 0;         // ceil(K / kt): groups of prototypes, one per warp
    int wk = 0, wd = 0;      // warps of a block along k (k-groups) and along d; wk * wd = kWarps
    int kblocks = 0;         // ceil(kgroups / wk): grid.y of the dot kernel
    long long per_warp = 0;  // elements of d one warp streams (multiple of 32 * 16 B)
    long long chunk = 0;     // wd * per_warp: elements of d one block covers
    int slices = 0;          // ceil(D / chunk): grid.x of the dot kernel
    size_t index_offset = 0;     // bytes: where the int32 index array starts in the workspace
    size_t workspace_bytes = 0;  // bytes
};

// Returns false (and a reason) for shapes the kernels do not take.
inline bool proto_plan(int B, int K, long long D, int dtype, bool aligned, ProtoPlan* plan,
                       const char** why) {
    if (B < 1 || K < 1 || D < 1) {
        if (why) *why = "proto_residual needs B >= 1, K >= 1 and D >= 1";
        return false;
    }
    if (static_cast<long long>(K) * D >= (1LL << 40)) {
        if (why) *why = "proto_residual: the bank is too large (K * D >= 2^40)";
        return false;
    }
    ProtoPlan p;
    p.B = B;
    p.K = K;
    p.D = D;
    const int full_vec = dtype == kF16 ? kProtoVecF16 : kProtoVecF32;
    p.vec = (aligned && D % full_vec == 0) ? full_vec : 1;
    p.residual_vec = (aligned && D % 8 == 0) ? 1 : 0;
    p.kt = B <= kProtoSmallBatch ? kProtoKTSmall : kProtoKTLarge;
    p.kgroups = static_cast<int>(ceil_div(K, p.kt));
    int wk = 1;
    while (wk < kWarps && wk < p.kgroups) wk *= 2;
    p.wk = wk;
    p.wd = kWarps / wk;
    p.kblocks = static_cast<int>(ceil_div(p.kgroups, wk));
    // The d split does not depend on the vector path, so the workspace does not either.
    const long long step = 32LL * full_vec;
    const long long wanted_slices = ceil_div(kProtoTargetBlocks, p.kblocks);
    long long per_warp = ceil_div(D, wanted_slices * p.wd);
    per_warp = ceil_div(per_warp, step) * step;
    p.per_warp = max_ll(per_warp, kProtoMinIters * step);
    p.chunk = p.per_warp * p.wd;
    p.slices = static_cast<int>(ceil_div(D, p.chunk));
    const size_t partial_bytes = static_cast<size_t>(p.slices) * B * K * sizeof(float);
    p.index_offset = align256(partial_bytes);
    p.workspace_bytes = align256(p.index_offset + static_cast<size_t>(B) * sizeof(int32_t));
    *plan = p;
    return true;
}

// ------------------------------------------------------------------------------------------
// multi_size_attention: three launches on one stream.
//   1. prn_msa_scores_<T>  grid (sum_s splits[s], B): partial scores of each head over a slice
//                          of its d = c*p*p token elements
//   2. prn_msa_softmax     grid (ceil(rows / 8), B): sum the slices, / d, softmax (FP32),
//                          rounded to the storage type like the reference's .to(v.dtype)
//   3. prn_msa_output_<T>  grid (sum_s groups[s], B): out = weights @ V, folded back in place
// Workspace: [partial: B * partial_per_image floats][pad][weights: B * weights_per_image][pad].
// ------------------------------------------------------------------------------------------
struct MsaPlan {
    int B = 0, heads = 0, c = 0, H = 0, W = 0;
    int vec = 1;                    // 4 elements per load when W % 4 == 0 and aligned; else 1
    int n[kMsaMaxHeads] = {};       // tokens of head s: (H/p) * (W/p) = 4^s
    int p[kMsaMaxHeads] = {};       // patch side H >> s
    long long d[kMsaMaxHeads] = {}; // token length c * p * p
    int units[kMsaMaxHeads] = {};   // staging units (channel, row in patch): c * p
    int splits[kMsaMaxHeads] = {};  // score blocks per head and image
    int groups[kMsaMaxHeads] = {};  // output blocks per head and image
    long long partial_off[kMsaMaxHeads] = {};  // floats, within one image's partials
    long long partial_per_image = 0;           // floats: sum_s splits[s] * n[s]^2
    int weight_off[kMsaMaxHeads] = {};         // floats, within one image's weights
    int weights_per_image = 0;                 // floats: sum_s n[s]^2
    int rows_per_image = 0;                    // sum_s n[s]
    int score_blocks = 0, out_blocks = 0;      // grid.x of kernels 1 and 3
    size_t weights_offset = 0;                 // bytes
    size_t workspace_bytes = 0;                // bytes
};

inline bool msa_plan(int B, int heads, int channels, int H, int W, int dtype, bool aligned,
                     MsaPlan* plan, const char** why) {
    if (heads < 1 || heads > kMsaMaxHeads) {
        if (why) *why = "multi_size_attention supports 1 to 4 heads";
        return false;
    }
    if (B < 1 || channels < 1 || channels % (3 * heads) != 0) {
        if (why) *why = "multi_size_attention needs B >= 1 and 3 * num_heads * c input channels";
        return false;
    }
    if (H != W || H % (1 << (heads - 1)) != 0) {
        if (why) *why = "multi_size_attention needs square maps whose side divides by 2^(num_heads-1)";
        return false;
    }
    if ((1LL << (heads - 1)) * W > kMsaStage) {
        if (why) *why = "multi_size_attention: map too wide for the staging buffer (2^(heads-1) * W > 2048)";
        return false;
    }
    MsaPlan m;
    m.B = B;
    m.heads = heads;
    m.c = channels / (3 * heads);
    m.H = H;
    m.W = W;
    m.vec = (aligned && W % 4 == 0) ? 4 : 1;
    const long long chw = static_cast<long long>(m.c) * H * W;
    const int eb = dtype_bytes(dtype);
    for (int s = 0; s < heads; ++s) {
        m.p[s] = H >> s;
        m.n[s] = (H / m.p[s]) * (W / m.p[s]);
        m.d[s] = static_cast<long long>(m.c) * m.p[s] * m.p[s];
        m.units[s] = m.c * m.p[s];
        // Split d so that each block reads >= kMsaScoreBlockElems elements of Q, and the
        // n x n partial scores it writes stay <= 1/8 of the bytes it reads (2 * n * d/S * eb).
        long long sp = min_ll(kMsaMaxSplits, m.units[s]);
        sp = min_ll(sp, chw / kMsaScoreBlockElems);
        sp = min_ll(sp, m.d[s] * eb / (16LL * m.n[s]));
        m.splits[s] = static_cast<int>(max_ll(1, sp));
        m.groups[s] = static_cast<int>(max_ll(1, min_ll(m.units[s], ceil_div(chw, kMsaOutBlockElems))));
        m.partial_off[s] = m.partial_per_image;
        m.partial_per_image += static_cast<long long>(m.splits[s]) * m.n[s] * m.n[s];
        m.weight_off[s] = m.weights_per_image;
        m.weights_per_image += m.n[s] * m.n[s];
        m.rows_per_image += m.n[s];
        m.score_blocks += m.splits[s];
        m.out_blocks += m.groups[s];
    }
    m.weights_offset = align256(static_cast<size_t>(B) * m.partial_per_image * sizeof(float));
    m.workspace_bytes =
        align256(m.weights_offset + static_cast<size_t>(B) * m.weights_per_image * sizeof(float));
    *plan = m;
    return true;
}

}  // namespace prn

#endif  // PRN_PLAN_H
