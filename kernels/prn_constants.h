// Compile-time constants shared by the CUDA kernels (kernels/*.cu), the host launch plans
// (kernels/prn_plan.h, used by the TensorRT plugins) and the CuPy loader (prn_edge.kernels,
// which reads the `constexpr int NAME = VALUE;` lines of this file, so keep that form).
//
// No #include and no CUDA types: this file is read by nvcc, by NVRTC, by g++ and by Python.
#ifndef PRN_CONSTANTS_H
#define PRN_CONSTANTS_H

namespace prn {

// Every kernel runs 256-thread blocks (8 warps).
inline constexpr int kThreads = 256;
inline constexpr int kWarps = 8;

// ---- proto_residual ----------------------------------------------------------------------
// One warp accumulates KT prototypes x BT images in registers, KT * BT = 32 FP32 sums (one per
// lane after the warp reduction): KT = 8, BT = 4 for batches of up to kProtoSmallBatch images
// (more bank bytes in flight per lane, the batch-1 case is pure bandwidth), KT = 4, BT = 8 above.
inline constexpr int kProtoSmallBatch = 4;
inline constexpr int kProtoKTSmall = 8;
inline constexpr int kProtoKTLarge = 4;
// Vector width of the streaming loads, in elements: 16 bytes per lane per load.
inline constexpr int kProtoVecF32 = 4;
inline constexpr int kProtoVecF16 = 8;
// Launch plan targets: about this many blocks in the dot-product grid (enough for several
// waves on a 132-SM H200 and many more on a 16-SM Orin), and at least this many vector
// iterations per warp so that the warp reduction stays small next to the streaming loop.
inline constexpr int kProtoTargetBlocks = 1024;
inline constexpr int kProtoMinIters = 4;

// ---- multi_size_attention ------------------------------------------------------------------
// At most 4 heads (n = 1, 4, 16, 64 tokens).
inline constexpr int kMsaMaxHeads = 4;
// Elements of one operand staged in shared memory per step: N tokens x E token elements with
// N * E = kMsaStage (E = 2048, 512, 128, 32 for N = 1, 4, 16, 64).
inline constexpr int kMsaStage = 2048;
// Padding of a staged token row, in floats (keeps 16-byte alignment, spreads rows over banks).
inline constexpr int kMsaPad = 4;
// Score partial sums: one block reads at least this many elements of Q (and as many of K)...
inline constexpr int kMsaScoreBlockElems = 4096;
// ...and at most this many blocks (splits of the d reduction) per head and image.
inline constexpr int kMsaMaxSplits = 64;
// Output pass: about this many output elements per block.
inline constexpr int kMsaOutBlockElems = 8192;

}  // namespace prn

#endif  // PRN_CONSTANTS_H
