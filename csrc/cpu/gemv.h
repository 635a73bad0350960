/*
 * gemv.h - what the sources of the CPU kernel library share: the GEMV kernel
 * (gemv.c), instruction-set selection, torch's OpenMP pool and bf16 helpers.
 * Everything declared here stays inside the library (-fvisibility=hidden);
 * only functions marked LMS_API are exported.
 */
#ifndef LMS_GEMV_H
#define LMS_GEMV_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define LMS_X86 1
#else
#define LMS_X86 0
#endif
/* AVX-512 BF16 intrinsics need gcc >= 10 or clang >= 9; older ones still build the rest. */
#if LMS_X86 && ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10))
#define LMS_AVX512BF16 1
#else
#define LMS_AVX512BF16 0
#endif

#if defined(_WIN32)
#define LMS_API __declspec(dllexport)
#else
#define LMS_API __attribute__((visibility("default")))
#endif

#if LMS_X86
#define T_AVX2 __attribute__((target("avx2,fma")))
#endif
#if LMS_AVX512BF16
#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

enum { ISA_PORTABLE = 0, ISA_AVX2 = 1, ISA_AVX512BF16 = 2 };

static inline float bf16_to_f32(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round-to-nearest-even, quiet NaNs kept: the same rounding torch uses. */
static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if LMS_AVX512BF16
/* Mask of the first n (clamped to 0..16) lanes. */
static inline __mmask16 lo_mask(int64_t n) { return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }
#endif

/* The instruction set in use (ISA_*), picked on first call. */
int lms_isa(void);

/* Runs fn(arg) on up to nthreads threads of torch's OpenMP pool, or once on the
 * calling thread when there is no pool or nthreads <= 1. */
void lms_parallel(void (*fn)(void *), void *arg, int nthreads);

/* Inside fn: this thread's index and the team size (0 and 1 outside a pool). */
int lms_thread_num(void);
int lms_num_threads(void);

/* y[b, :out] = x[b, :in] @ W^T (+ bias) for b < nb, in bf16 (bf16 != 0) or fp32:
 * x, y, bias of that dtype, w packed as described in gemv.c, bias NULL or [out];
 * the bias is added in fp32 before the one rounding of y. */
void lms_gemv(int bf16, const void *x, int64_t ldx, int64_t nb, int64_t in, const void *w, int64_t out,
              const void *bias, void *y, int64_t ldy, int nthreads);

#endif /* LMS_GEMV_H */
