// Host entry points of the fused kernels, for the TensorRT plugins (kernels/plugins/).
//
// Each `*_enqueue` issues the kernel sequence of one op on `stream` (no synchronisation, no
// allocation) and returns cudaSuccess or the launch error; cudaErrorInvalidValue means shapes
// the kernels do not take (see kernels/prn_plan.h) or a workspace smaller than `*_workspace`.
// dtype: 0 = FP32, 1 = FP16 (IEEE binary16 storage); all arithmetic is FP32.
#ifndef PRN_LAUNCH_H
#define PRN_LAUNCH_H

#include <cstddef>

#ifndef PRN_CPU_EMULATION
#include <cuda_runtime_api.h>

// kernel<<<grid, block, 0, stream>>>(args...), spelled as a macro so that the CPU emulator
// (kernels/emulator/) can run the same launcher code.
#define PRN_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

extern "C" {

// Workspace bytes of ProtoResidual for a batch of B images (0: shapes not supported).
size_t prn_proto_residual_workspace(int B, int K, long long D, int dtype);

// features (B, D) and bank (K, D) of `dtype`, sqnorm (K,) FP32 -> out (B, D) of `dtype`.
// mode 0: |F - P_k*|, mode 1: (F - P_k*)^2, k* = argmin_k sqnorm[k] - 2 <F, P_k>.
cudaError_t prn_proto_residual_enqueue(const void* features, const void* bank, const float* sqnorm, void* out,
                                       void* workspace, size_t workspace_bytes, int B, int K, long long D, int mode,
                                       int dtype, cudaStream_t stream);

// Workspace bytes of MultiSizeAttention (0: shapes not supported).
size_t prn_msa_workspace(int B, int heads, int channels, int H, int W, int dtype);

// qkv (B, 3*heads*c, H, W) of `dtype` -> out (B, heads*c, H, W) of `dtype`.
cudaError_t prn_msa_enqueue(const void* qkv, void* out, void* workspace, size_t workspace_bytes, int B, int heads,
                            int channels, int H, int W, int dtype, cudaStream_t stream);

}  // extern "C"

#endif  // PRN_LAUNCH_H
