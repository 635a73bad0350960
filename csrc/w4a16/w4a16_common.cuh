// Pieces shared by the W4A16 kernels (w4a16_gemv.cu, w4a16_gemm.cu): conversions, the half2
// dequantisation of an AWQ word, programmatic dependent launch, and host-side helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace lms {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ __half2 bits_as_half2(uint32_t bits) {
  __half2 h;
  static_assert(sizeof(h) == sizeof(bits), "a half2 is one 32-bit register");
  memcpy(&h, &bits, sizeof(h));
  return h;
}

__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
  uint32_t bits;
  memcpy(&bits, &h, sizeof(bits));
  return bits;
}

// (a & mask) | bits in one LOP3. Written in C++, the compiler emits an AND and an OR (two 32-bit
// immediates do not fit one instruction); here ptxas keeps one of them in a register.
template <uint32_t kMask, uint32_t kBits>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "n"(kMask), "n"(kBits));  // 0xea: (a & b) | c
  return d;
}

// The 4 column pairs of a word as half2 values "magic + q": pair j holds field j of both 16-bit
// halves (columns 2j and 2j + 1). Fields 0 and 2 (bits 0-3, 8-11) or-ed into 1024.0 (0x6400, unit
// 1) give 1024 + q; fields 1 and 3 (bits 4-7, 12-15) or-ed into 64.0 (0x5400, unit 1/16) give
// 64 + q. One LOP3 a pair, plus one shift a word.
__device__ __forceinline__ void magic_pairs(uint32_t word, __half2 (&out)[4]) {
  const uint32_t high = word >> 8;
  out[0] = bits_as_half2(and_or<0x000F000Fu, 0x64006400u>(word));
  out[1] = bits_as_half2(and_or<0x00F000F0u, 0x54005400u>(word));
  out[2] = bits_as_half2(and_or<0x000F000Fu, 0x64006400u>(high));
  out[3] = bits_as_half2(and_or<0x00F000F0u, 0x54005400u>(high));
}

// Programmatic dependent launch (sm_90+; no-ops when the launch did not ask for it).
__device__ __forceinline__ void let_next_kernel_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// --- host side ----------------------------------------------------------------------------------

// Launches `kernel` on `stream`, with programmatic dependent launch where `pdl` (the kernels call
// let_next_kernel_start and wait_for_previous_kernel themselves).
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                          bool pdl, Args&&... args) {
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

struct DeviceInfo {
  int sms;
  bool pdl;  // programmatic dependent launch: compute capability 9.0+, unless LMSTATION_PDL=0
};

// The current device's (cached per device).
inline cudaError_t device_info(DeviceInfo* out) {
  static DeviceInfo cached[128] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 128 && cached[device].sms > 0) {
    *out = cached[device];
    return cudaSuccess;
  }
  int major = 0;
  err = cudaDeviceGetAttribute(&out->sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  const char* env = getenv("LMSTATION_PDL");
  out->pdl = major >= 9 && !(env && strcmp(env, "0") == 0);
  if (device < 128) cached[device] = *out;
  return cudaSuccess;
}

}  // namespace lms
