// Fused multi-size attention core (PRN's MultiSizeAttention), FP32 and FP16 storage, FP32 math.
//
// Reference: prn_edge.model.attention.multi_size_attention. qkv (B, 3*heads*c, H, W), channels
// [Q of heads 0..h-1 | K of heads 0..h-1 | V of heads 0..h-1], c each. Head s cuts its maps
// into n = 4^s non-overlapping patches of side p = H >> s; a patch flattened (channel, row,
// column) is one token of d = c*p*p elements. out[:, s*c:(s+1)*c] = fold(softmax(Q K^T / d) V).
//
// Shapes that matter: n = 1, 4, 16, 64 tokens, but d = c*p*p is huge (c = 128, H = 64:
// d = 524288 for head 0, 8192 for head 3). The score matrix is tiny (n x n <= 64 x 64) and is
// a reduction over d, so the decomposition is split-d:
//
//   token element e of token (gy, gx) = (ch, py, px) sits at qkv[ch, gy*p + py, gx*p + px].
//   A "unit" u = (ch, py) is the set of image rows y = gy*p + py for every gy: n*p elements
//   that hold the same p token elements (px = 0..p-1) of all n tokens, read as whole image rows
//   (coalesced, no unfold copy). A stage of E / p units is copied into shared memory
//   token-major, Qs[t][e] (n rows of E = 2048/n floats, + 4 floats of padding), so that every
//   stage holds 2048 elements of Q and 2048 of K whatever the head.
//
// 1. prn_msa_scores_<T>, grid (sum_s splits[s], B): block (s, split) walks units
//    [split*per, (split+1)*per) of head s, stage by stage, and accumulates its share of
//    S = Q K^T in registers: thread tile TS x TS of (i, j) (TS = 1, 2, 4, 4 for n = 1..64),
//    16-byte shared loads of 4 consecutive e, the 256/(n/TS)^2 threads that share a tile
//    taking alternate quads of e and adding up at the end in shared memory (fixed order).
//    It writes its n x n partial to the workspace. Bytes: Q + K once, 2 * B*heads*c*H*W*sizeof(T),
//    plus the partials (the plan keeps them <= 1/8 of that).
// 2. prn_msa_softmax, grid (ceil(rows / 8), B): one warp per score row: sum the splits (in
//    order), / d, softmax in FP32 (max, exp, sum, divide: torch's formula), then rounded to the
//    storage type as the reference's `.to(v.dtype)` does.
// 3. prn_msa_output_<T>, grid (sum_s groups[s], B): per unit stage, V is staged token-major like
//    Q and K, the n x n weights sit transposed in shared memory, and each thread computes a
//    TI x 4 tile of out[i][e] = sum_j w[i][j] V[j][e] (a loop over n <= 64 tokens, FP32),
//    staged again and written back folded, as whole image rows. Bytes: V read once, out written
//    once, B*heads*c*H*W*sizeof(T) each.
#include "prn_constants.h"
#include "prn_device.cuh"

namespace prn {

// Geometry of a head with N tokens (N = G*G) and of its staged operand.
template <int N>
struct Head {
    static constexpr int G = N == 1 ? 1 : N == 4 ? 2 : N == 16 ? 4 : 8;  // patches per side
    static constexpr int E = kMsaStage / N;                              // token elements per stage
    static constexpr int SE = E + kMsaPad;                               // floats per staged token row
    static_assert(G * G == N, "N must be 1, 4, 16 or 64");
};

constexpr int kScoreSmem = 2 * 64 * Head<64>::SE;                         // Qs + Ks, N = 64: 4608 floats
constexpr int kOutSmem = 2 * 64 * Head<64>::SE + 64 * (64 + kMsaPad);     // Vt + Ot + Wt: 8960 floats

// Where staged element `idx` of units [u0, u0 + nu) lives. Elements are ordered unit by unit
// (unit ul = (channel, row in patch) of the head's c maps), then token row gy, then image column
// x; image column x of token row gy holds token t = gy*G + x/p, token element e = ul*p + x%p.
template <int N>
struct StageElem {
    static constexpr int G = Head<N>::G, SE = Head<N>::SE;
    int x;            // image column
    int row;          // shared-memory offset of (token row gy, e = ul*p)
    long long global; // element offset in the operand (c maps of H x W)

    __device__ __forceinline__ StageElem(int idx, int u0, int p, int W, long long HW) {
        const int row_elems = G * W;  // one unit: G image rows
        const int ul = idx / row_elems;
        const int rem = idx - ul * row_elems;
        const int gy = rem / W;
        x = rem - gy * W;
        const int u = u0 + ul;
        const int ch = u / p;
        const int py = u - ch * p;
        global = ch * HW + static_cast<long long>(gy * p + py) * W + x;
        row = gy * G * SE + ul * p;
    }
    // Shared-memory offset of image column xc in the image row whose token row starts at `row`.
    __device__ __forceinline__ static int smem(int row, int xc, int p) {
        const int gx = xc / p;
        return row + gx * SE + (xc - gx * p);
    }
};

// Copy units [u0, u0 + nu) of one head's operand (c maps of H x W at `base`) into sm[t][e].
//
// Vector path (W % 4 == 0, 16-byte aligned maps): a stage is at most kMsaStage elements, i.e.
// at most 2 vectors of 4 per thread; fetch() issues all of a thread's global loads (for Q and K
// both before any shared store, 4 x 16 B in flight per thread) and put() scatters them into the
// token-major layout. The scalar path (odd shapes only) is a plain loop.
template <typename T, int N>
struct StageVec {
    static constexpr int G = Head<N>::G;
    static constexpr int PER = kMsaStage / (kThreads * 4);
    float v[PER][4];
    int row[PER];  // StageElem::row of the first of the 4 elements, -1: no element
    int x[PER];    // image column of the first of the 4 elements

    __device__ __forceinline__ void fetch(const T* __restrict__ base, int u0, int nu, int p, int W, long long HW) {
        const int total = nu * G * W;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int idx = (threadIdx.x + i * kThreads) * 4;
            row[i] = -1;
            if (idx < total) {
                const StageElem<N> e(idx, u0, p, W, HW);
                x[i] = e.x;
                load_vec(base + e.global, v[i]);
                row[i] = e.row;
            }
        }
    }
    __device__ __forceinline__ void put(float* sm, int p) const {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            if (row[i] >= 0) {
#pragma unroll
                for (int k = 0; k < 4; ++k) sm[StageElem<N>::smem(row[i], x[i] + k, p)] = v[i][k];
            }
        }
    }
};

template <typename T, int N>
__device__ __forceinline__ void stage_load_scalar(const T* __restrict__ base, float* sm, int u0, int nu, int p,
                                                  int W, long long HW) {
    const int total = nu * Head<N>::G * W;
#pragma unroll 1
    for (int idx = threadIdx.x; idx < total; idx += kThreads) {
        const StageElem<N> e(idx, u0, p, W, HW);
        float v[1];
        load_vec(base + e.global, v);
        sm[StageElem<N>::smem(e.row, e.x, p)] = v[0];
    }
}

// The inverse of the stage loads: sm[t][e] -> out, rounded to T (stores need no latency hiding).
template <typename T, int N>
__device__ __forceinline__ void stage_store(T* __restrict__ base, const float* sm, int u0, int nu, int p, int W,
                                            long long HW, int vec) {
    const int total = nu * Head<N>::G * W;
    if (vec) {
#pragma unroll 1
        for (int idx = threadIdx.x * 4; idx < total; idx += kThreads * 4) {
            const StageElem<N> e(idx, u0, p, W, HW);
            float v[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) v[k] = sm[StageElem<N>::smem(e.row, e.x + k, p)];
            store_vec(base + e.global, v);
        }
    } else {
#pragma unroll 1
        for (int idx = threadIdx.x; idx < total; idx += kThreads) {
            const StageElem<N> e(idx, u0, p, W, HW);
            const float v[1] = {sm[StageElem<N>::smem(e.row, e.x, p)]};
            store_vec(base + e.global, v);
        }
    }
}

// Zero e in [ev, ev rounded up to 4) of every token row, so whole quads can be read.
template <int N>
__device__ __forceinline__ void stage_zero_tail(float* sm, int ev) {
    constexpr int SE = Head<N>::SE;
    const int pad = ((ev + 3) & ~3) - ev;
    for (int i = threadIdx.x; i < N * pad; i += kThreads) sm[(i / pad) * SE + ev + i % pad] = 0.0f;
}

// Units [begin, end) of split `split` out of `splits` over `units`.
__device__ __forceinline__ void split_range(int units, int split, int splits, int* begin, int* end) {
    const int per = (units + splits - 1) / splits;
    *begin = min(units, split * per);
    *end = min(units, *begin + per);
}

// ---- 1. partial scores of one head over a slice of d ----------------------------------------
template <typename T, int N>
__device__ __forceinline__ void scores_head(const T* __restrict__ q, const T* __restrict__ k, float* __restrict__ out,
                                            int c, int H, int split, int splits, int vec, float* smem) {
    constexpr int G = Head<N>::G, E = Head<N>::E, SE = Head<N>::SE;
    constexpr int TS = N == 1 ? 1 : (N == 4 ? 2 : 4);  // thread tile: TS x TS scores
    constexpr int T1 = N / TS;                         // tiles per side
    constexpr int TILES = T1 * T1;                     // 1, 4, 16, 256
    constexpr int L = kThreads / TILES;                // threads sharing a tile: 256, 64, 16, 1
    const int W = H;
    const long long HW = static_cast<long long>(H) * W;
    const int p = H / G;
    const int U = E / p;  // units per stage (>= 1: the plan checks G * W <= kMsaStage)
    int ub, ue;
    split_range(c * p, split, splits, &ub, &ue);
    float* Qs = smem;
    float* Ks = smem + N * SE;
    const int tile = threadIdx.x % TILES;
    const int lane = threadIdx.x / TILES;
    const int ti = tile / T1, tj = tile % T1;  // rows i = ti + r*T1, columns j = tj + cc*T1

    float acc[TS][TS];
#pragma unroll
    for (int r = 0; r < TS; ++r)
#pragma unroll
        for (int cc = 0; cc < TS; ++cc) acc[r][cc] = 0.0f;

    for (int u0 = ub; u0 < ue; u0 += U) {
        const int nu = min(U, ue - u0);
        const int ev = nu * p;  // valid token elements in this stage
        if (vec) {
            StageVec<T, N> sq, sk;
            sq.fetch(q, u0, nu, p, W, HW);
            sk.fetch(k, u0, nu, p, W, HW);
            sq.put(Qs, p);
            sk.put(Ks, p);
        } else {
            stage_load_scalar<T, N>(q, Qs, u0, nu, p, W, HW);
            stage_load_scalar<T, N>(k, Ks, u0, nu, p, W, HW);
        }
        stage_zero_tail<N>(Qs, ev);
        stage_zero_tail<N>(Ks, ev);
        __syncthreads();
        const int quads = (ev + 3) >> 2;
#pragma unroll 1
        for (int qd = lane; qd < quads; qd += L) {
            float4 a[TS], b[TS];
#pragma unroll
            for (int r = 0; r < TS; ++r) a[r] = *reinterpret_cast<const float4*>(Qs + (ti + r * T1) * SE + 4 * qd);
#pragma unroll
            for (int cc = 0; cc < TS; ++cc) b[cc] = *reinterpret_cast<const float4*>(Ks + (tj + cc * T1) * SE + 4 * qd);
#pragma unroll
            for (int r = 0; r < TS; ++r)
#pragma unroll
                for (int cc = 0; cc < TS; ++cc) {
                    float s = acc[r][cc];
                    s = fmaf(a[r].x, b[cc].x, s);
                    s = fmaf(a[r].y, b[cc].y, s);
                    s = fmaf(a[r].z, b[cc].z, s);
                    s = fmaf(a[r].w, b[cc].w, s);
                    acc[r][cc] = s;
                }
        }
        __syncthreads();
    }

    if (L == 1) {  // N = 64: each thread owns its 16 scores
#pragma unroll
        for (int r = 0; r < TS; ++r)
#pragma unroll
            for (int cc = 0; cc < TS; ++cc) out[(ti + r * T1) * N + tj + cc * T1] = acc[r][cc];
    } else {  // add the L threads of each tile, in lane order (L*TILES*TS*TS <= 4096 floats)
        float* red = smem;
#pragma unroll
        for (int r = 0; r < TS; ++r)
#pragma unroll
            for (int cc = 0; cc < TS; ++cc) red[((r * TS + cc) * L + lane) * TILES + tile] = acc[r][cc];
        __syncthreads();
        for (int o = threadIdx.x; o < N * N; o += kThreads) {
            const int i = o / N, j = o % N;
            const float* src = red + ((i / T1) * TS + j / T1) * L * TILES + (i % T1) * T1 + j % T1;
            float s = 0.0f;
            for (int l = 0; l < L; ++l) s += src[l * TILES];
            out[o] = s;
        }
    }
}

template <typename T>
__device__ __forceinline__ void msa_scores(const T* __restrict__ qkv, float* __restrict__ partial, int heads, int c,
                                           int H, int vec, int s0, int s1, int s2, int s3) {
    __shared__ __align__(16) float smem[kScoreSmem];
    // Which head and split this block is; offsets of the partial scores (unrolled: no local memory).
    int head = -1, split = 0, splits = 1, first = 0;
    long long poff = 0, per_image = 0;
#pragma unroll
    for (int s = 0; s < kMsaMaxHeads; ++s) {
        if (s < heads) {
            const int sp = s == 0 ? s0 : s == 1 ? s1 : s == 2 ? s2 : s3;
            if (head < 0 && static_cast<int>(blockIdx.x) < first + sp) {
                head = s; split = blockIdx.x - first; splits = sp; poff = per_image;
            }
            first += sp;
            per_image += static_cast<long long>(sp) << (4 * s);  // splits * n^2, n = 4^s
        }
    }
    if (head < 0) return;
    const long long HW = static_cast<long long>(H) * H;
    const T* q = qkv + (static_cast<long long>(blockIdx.y) * 3 * heads + head) * c * HW;
    const T* k = q + static_cast<long long>(heads) * c * HW;
    float* out = partial + blockIdx.y * per_image + poff + (static_cast<long long>(split) << (4 * head));
    switch (head) {
        case 0: scores_head<T, 1>(q, k, out, c, H, split, splits, vec, smem); break;
        case 1: scores_head<T, 4>(q, k, out, c, H, split, splits, vec, smem); break;
        case 2: scores_head<T, 16>(q, k, out, c, H, split, splits, vec, smem); break;
        default: scores_head<T, 64>(q, k, out, c, H, split, splits, vec, smem); break;
    }
}

// ---- 2. softmax rows -------------------------------------------------------------------------
__device__ __forceinline__ void msa_softmax(const float* __restrict__ partial, float* __restrict__ weights, int heads,
                                            int c, int H, int s0, int s1, int s2, int s3, int round_half) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * kWarps + warp;
    int head = -1, i = 0, n = 1, splits = 1, rfirst = 0, woff = 0, per_image_w = 0;
    long long poff = 0, per_image = 0;
#pragma unroll
    for (int s = 0; s < kMsaMaxHeads; ++s) {
        if (s < heads) {
            const int sp = s == 0 ? s0 : s == 1 ? s1 : s == 2 ? s2 : s3;
            const int ns = 1 << (2 * s);
            if (head < 0 && row < rfirst + ns) {
                head = s; i = row - rfirst; n = ns; splits = sp; poff = per_image; woff = per_image_w;
            }
            rfirst += ns;
            per_image += static_cast<long long>(sp) * ns * ns;
            per_image_w += ns * ns;
        }
    }
    if (head < 0) return;  // warp-uniform: rows past the last head
    const int p = H >> head;
    const float d = static_cast<float>(static_cast<long long>(c) * p * p);  // like torch's `/ d`
    const float* src = partial + blockIdx.y * per_image + poff + static_cast<long long>(i) * n;
    const long long stride = static_cast<long long>(n) * n;
    const float ninf = __int_as_float(0xff800000);
    float v0 = ninf, v1 = ninf;  // columns j = lane and lane + 32
    if (lane < n) {
        float s = 0.0f;
        for (int t = 0; t < splits; ++t) s += src[t * stride + lane];
        v0 = s / d;
    }
    if (lane + 32 < n) {
        float s = 0.0f;
        for (int t = 0; t < splits; ++t) s += src[t * stride + lane + 32];
        v1 = s / d;
    }
    const float m = warp_max(fmaxf(v0, v1));
    const float e0 = lane < n ? expf(v0 - m) : 0.0f;
    const float e1 = lane + 32 < n ? expf(v1 - m) : 0.0f;
    const float sum = warp_sum(e0 + e1);
    float w0 = e0 / sum, w1 = e1 / sum;
    if (round_half) { w0 = round_to<half_t>(w0); w1 = round_to<half_t>(w1); }
    float* dst = weights + blockIdx.y * per_image_w + woff + i * n;
    if (lane < n) dst[lane] = w0;
    if (lane + 32 < n) dst[lane + 32] = w1;
}

// ---- 3. weights @ V, folded back -----------------------------------------------------------
template <typename T, int N>
__device__ __forceinline__ void output_head(const T* __restrict__ v, const float* __restrict__ wts,
                                            T* __restrict__ out, int c, int H, int group, int groups, int vec,
                                            float* smem) {
    constexpr int G = Head<N>::G, E = Head<N>::E, SE = Head<N>::SE;
    constexpr int SW = N + kMsaPad;
    constexpr int TI = N == 1 ? 1 : 2;  // output rows per thread (x 4 consecutive e)
    constexpr int T1 = N / TI;
    const int W = H;
    const long long HW = static_cast<long long>(H) * W;
    const int p = H / G;
    const int U = E / p;
    int ub, ue;
    split_range(c * p, group, groups, &ub, &ue);
    float* Vt = smem;              // V stage, token-major [j][e]
    float* Ot = smem + N * SE;     // output stage, [i][e]
    float* Wt = smem + 2 * N * SE; // weights transposed, [j][i]
    for (int o = threadIdx.x; o < N * N; o += kThreads) Wt[(o % N) * SW + o / N] = wts[o];

    for (int u0 = ub; u0 < ue; u0 += U) {
        const int nu = min(U, ue - u0);
        const int ev = nu * p;
        if (vec) {
            StageVec<T, N> sv;
            sv.fetch(v, u0, nu, p, W, HW);
            sv.put(Vt, p);
        } else {
            stage_load_scalar<T, N>(v, Vt, u0, nu, p, W, HW);
        }
        stage_zero_tail<N>(Vt, ev);
        __syncthreads();
        const int quads = (ev + 3) >> 2;
        for (int pair = threadIdx.x; pair < T1 * quads; pair += kThreads) {
            const int qd = pair % quads;
            const int ti = pair / quads;
            float acc[TI][4];
#pragma unroll
            for (int r = 0; r < TI; ++r)
#pragma unroll
                for (int x = 0; x < 4; ++x) acc[r][x] = 0.0f;
#pragma unroll 4
            for (int j = 0; j < N; ++j) {
                float w[TI];
                if (TI == 2) {
                    const float2 w2 = *reinterpret_cast<const float2*>(Wt + j * SW + ti * TI);
                    w[0] = w2.x;
                    w[TI - 1] = w2.y;
                } else {
                    w[0] = Wt[j * SW + ti];
                }
                const float4 x4 = *reinterpret_cast<const float4*>(Vt + j * SE + 4 * qd);
#pragma unroll
                for (int r = 0; r < TI; ++r) {
                    acc[r][0] = fmaf(w[r], x4.x, acc[r][0]);
                    acc[r][1] = fmaf(w[r], x4.y, acc[r][1]);
                    acc[r][2] = fmaf(w[r], x4.z, acc[r][2]);
                    acc[r][3] = fmaf(w[r], x4.w, acc[r][3]);
                }
            }
#pragma unroll
            for (int r = 0; r < TI; ++r)
                *reinterpret_cast<float4*>(Ot + (ti * TI + r) * SE + 4 * qd) =
                    make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        }
        __syncthreads();
        stage_store<T, N>(out, Ot, u0, nu, p, W, HW, vec);
        __syncthreads();
    }
}

template <typename T>
__device__ __forceinline__ void msa_output(const T* __restrict__ qkv, const float* __restrict__ weights,
                                           T* __restrict__ out, int heads, int c, int H, int vec, int g0, int g1,
                                           int g2, int g3) {
    __shared__ __align__(16) float smem[kOutSmem];
    int head = -1, group = 0, groups = 1, first = 0, woff = 0, per_image_w = 0;
#pragma unroll
    for (int s = 0; s < kMsaMaxHeads; ++s) {
        if (s < heads) {
            const int gs = s == 0 ? g0 : s == 1 ? g1 : s == 2 ? g2 : g3;
            if (head < 0 && static_cast<int>(blockIdx.x) < first + gs) {
                head = s; group = blockIdx.x - first; groups = gs; woff = per_image_w;
            }
            first += gs;
            per_image_w += 1 << (4 * s);
        }
    }
    if (head < 0) return;
    const long long HW = static_cast<long long>(H) * H;
    const T* v = qkv + (static_cast<long long>(blockIdx.y) * 3 * heads + 2 * heads + head) * c * HW;
    T* o = out + (static_cast<long long>(blockIdx.y) * heads + head) * c * HW;
    const float* w = weights + blockIdx.y * per_image_w + woff;
    switch (head) {
        case 0: output_head<T, 1>(v, w, o, c, H, group, groups, vec, smem); break;
        case 1: output_head<T, 4>(v, w, o, c, H, group, groups, vec, smem); break;
        case 2: output_head<T, 16>(v, w, o, c, H, group, groups, vec, smem); break;
        default: output_head<T, 64>(v, w, o, c, H, group, groups, vec, smem); break;
    }
}

}  // namespace prn

// ---- entry points (extern "C": the names CuPy's RawModule and the plugin launch) ----------
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_msa_scores_f32(const float* __restrict__ qkv, float* __restrict__ partial, int heads, int c, int H, int vec,
                   int s0, int s1, int s2, int s3) {
    prn::msa_scores<float>(qkv, partial, heads, c, H, vec, s0, s1, s2, s3);
}
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_msa_scores_f16(const prn::half_t* __restrict__ qkv, float* __restrict__ partial, int heads, int c, int H,
                   int vec, int s0, int s1, int s2, int s3) {
    prn::msa_scores<prn::half_t>(qkv, partial, heads, c, H, vec, s0, s1, s2, s3);
}
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_msa_softmax(const float* __restrict__ partial, float* __restrict__ weights, int heads, int c, int H, int s0,
                int s1, int s2, int s3, int round_half) {
    prn::msa_softmax(partial, weights, heads, c, H, s0, s1, s2, s3, round_half);
}
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_msa_output_f32(const float* __restrict__ qkv, const float* __restrict__ weights, float* __restrict__ out,
                   int heads, int c, int H, int vec, int g0, int g1, int g2, int g3) {
    prn::msa_output<float>(qkv, weights, out, heads, c, H, vec, g0, g1, g2, g3);
}
extern "C" __global__ void __launch_bounds__(prn::kThreads)
prn_msa_output_f16(const prn::half_t* __restrict__ qkv, const float* __restrict__ weights,
                   prn::half_t* __restrict__ out, int heads, int c, int H, int vec, int g0, int g1, int g2, int g3) {
    prn::msa_output<prn::half_t>(qkv, weights, out, heads, c, H, vec, g0, g1, g2, g3);
}

// ---- host launcher for the TensorRT plugin (not seen by NVRTC) -----------------------------
#ifndef __CUDACC_RTC__
#include <cstdint>

#include "prn_launch.h"
#include "prn_plan.h"

extern "C" size_t prn_msa_workspace(int B, int heads, int channels, int H, int W, int dtype) {
    prn::MsaPlan plan;
    return prn::msa_plan(B, heads, channels, H, W, dtype, true, &plan, nullptr) ? plan.workspace_bytes : 0;
}

namespace {

// The kernels of one storage type T; the launch sequence below is the same for both.
template <typename T>
struct MsaKernels {
    void (*scores)(const T*, float*, int, int, int, int, int, int, int, int);
    void (*output)(const T*, const float*, T*, int, int, int, int, int, int, int, int);
};

template <typename T>
void msa_launches(const MsaKernels<T>& k, const prn::MsaPlan& m, const void* qkv, void* out, float* partial,
                  float* weights, cudaStream_t stream) {
    auto x = static_cast<const T*>(qkv);
    const int vec = m.vec > 1 ? 1 : 0;
    const int* sp = m.splits;  // 0 past the last head
    const int* gr = m.groups;
    const int round_half = sizeof(T) == 2 ? 1 : 0;  // weights rounded like the reference's .to(v.dtype)
    const dim3 g1(m.score_blocks, m.B), g2(static_cast<unsigned>(prn::ceil_div(m.rows_per_image, prn::kWarps)), m.B),
        g3(m.out_blocks, m.B);
    PRN_LAUNCH(k.scores, g1, prn::kThreads, stream)(x, partial, m.heads, m.c, m.H, vec, sp[0], sp[1], sp[2], sp[3]);
    PRN_LAUNCH(prn_msa_softmax, g2, prn::kThreads, stream)(partial, weights, m.heads, m.c, m.H, sp[0], sp[1], sp[2],
                                                           sp[3], round_half);
    PRN_LAUNCH(k.output, g3, prn::kThreads, stream)(x, weights, static_cast<T*>(out), m.heads, m.c, m.H, vec, gr[0],
                                                    gr[1], gr[2], gr[3]);
}

}  // namespace

extern "C" cudaError_t prn_msa_enqueue(const void* qkv, void* out, void* workspace, size_t workspace_bytes, int B,
                                       int heads, int channels, int H, int W, int dtype, cudaStream_t stream) {
    const bool aligned = ((reinterpret_cast<uintptr_t>(qkv) | reinterpret_cast<uintptr_t>(out)) & 15u) == 0;
    prn::MsaPlan m;
    if (!prn::msa_plan(B, heads, channels, H, W, dtype, aligned, &m, nullptr) || workspace == nullptr ||
        workspace_bytes < m.workspace_bytes || (dtype != prn::kF32 && dtype != prn::kF16))
        return cudaErrorInvalidValue;
    float* partial = static_cast<float*>(workspace);
    float* weights = reinterpret_cast<float*>(static_cast<char*>(workspace) + m.weights_offset);
    if (dtype == prn::kF32)
        msa_launches<float>({prn_msa_scores_f32, prn_msa_output_f32}, m, qkv, out, partial, weights, stream);
    else
        msa_launches<prn::half_t>({prn_msa_scores_f16, prn_msa_output_f16}, m, qkv, out, partial, weights, stream);
    return cudaGetLastError();
}
#endif  // __CUDACC_RTC__
