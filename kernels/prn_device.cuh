// Device helpers shared by the fused kernels: FP16 storage, vector loads and stores.
//
// Self-contained on purpose: no <cuda_fp16.h> and no standard header, so that the same
// sources compile with nvcc, with NVRTC (CuPy RawModule, no include path needed) and inside
// the TensorRT plugin library. FP16 values are stored as their IEEE binary16 bits
// (`half_t`, bit-compatible with __half and with torch.float16 / numpy.float16) and converted
// with the same PTX instructions that cuda_fp16.h uses (cvt.f32.f16, cvt.rn.f16.f32).
// All arithmetic is FP32; FP16 is a storage format only.
#ifndef PRN_DEVICE_CUH
#define PRN_DEVICE_CUH

#include "prn_constants.h"

namespace prn {

typedef unsigned short half_t;  // IEEE binary16 bits

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(half_t h) {
#ifdef PRN_CPU_EMULATION  // kernels/emulator: the same conversion, bit for bit, in C++
    return cuda_emu::half_to_float(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

template <typename T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ float from_float<float>(float f) { return f; }
template <> __device__ __forceinline__ half_t from_float<half_t>(float f) {
#ifdef PRN_CPU_EMULATION
    return cuda_emu::float_to_half(f);
#else
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));  // round to nearest even, like torch
    return h;
#endif
}

// Round an FP32 value to the storage precision T and back (identity for FP32): reproduces
// the rounding points of the PyTorch reference when it runs in FP16.
template <typename T> __device__ __forceinline__ float round_to(float f) {
    return to_float(from_float<T>(f));
}

__device__ __forceinline__ void unpack_half2(unsigned int w, float* v) {
    v[0] = to_float(static_cast<half_t>(w & 0xffffu));
    v[1] = to_float(static_cast<half_t>(w >> 16));
}
__device__ __forceinline__ unsigned int pack_half2(float a, float b) {
    return static_cast<unsigned int>(from_float<half_t>(a)) |
           (static_cast<unsigned int>(from_float<half_t>(b)) << 16);
}

// ---- loads: V consecutive elements into FP32 registers; p must be aligned to V elements ----
// (the callers only take the vector path when every row start is 16-byte aligned).
__device__ __forceinline__ void load_vec(const float* __restrict__ p, float (&v)[1]) { v[0] = *p; }
__device__ __forceinline__ void load_vec(const half_t* __restrict__ p, float (&v)[1]) { v[0] = to_float(*p); }

__device__ __forceinline__ void load_vec(const float* __restrict__ p, float (&v)[4]) {
    const float4 q = *reinterpret_cast<const float4*>(p);  // 16 B
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ __forceinline__ void load_vec(const half_t* __restrict__ p, float (&v)[4]) {
    const uint2 q = *reinterpret_cast<const uint2*>(p);  // 8 B
    unpack_half2(q.x, v); unpack_half2(q.y, v + 2);
}
__device__ __forceinline__ void load_vec(const float* __restrict__ p, float (&v)[8]) {
    const float4 a = *reinterpret_cast<const float4*>(p);  // 2 x 16 B
    const float4 b = *reinterpret_cast<const float4*>(p + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load_vec(const half_t* __restrict__ p, float (&v)[8]) {
    const uint4 q = *reinterpret_cast<const uint4*>(p);  // 16 B
    unpack_half2(q.x, v); unpack_half2(q.y, v + 2); unpack_half2(q.z, v + 4); unpack_half2(q.w, v + 6);
}

// ---- stores: V FP32 values rounded to the storage type ---------------------------------------
__device__ __forceinline__ void store_vec(float* p, const float (&v)[1]) { *p = v[0]; }
__device__ __forceinline__ void store_vec(half_t* p, const float (&v)[1]) { *p = from_float<half_t>(v[0]); }
__device__ __forceinline__ void store_vec(float* p, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_vec(half_t* p, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]));
}
__device__ __forceinline__ void store_vec(float* p, const float (&v)[8]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store_vec(half_t* p, const float (&v)[8]) {
    *reinterpret_cast<uint4*>(p) = make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]),
                                              pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

}  // namespace prn

#endif  // PRN_DEVICE_CUH
