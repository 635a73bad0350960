/* W4A16 products for decode batches: y = x @ W with W in the AWQ 4-bit "gemm" layout. A GEMV
 * (CUDA cores) for 1..LMS_W4A16_MAX_M rows, a GEMM (tensor cores) for more.
 *
 * Plain C ABI (no torch, no C++ types) so that a prebuilt library survives torch upgrades and
 * bundling; the engine loads it with ctypes (app/engine/kernels/cuda_library.py).
 *
 * Shapes, for a linear with K inputs, N outputs and group size G:
 *   x        [M, K]      fp16 or bf16 (dtype flag), contiguous, 1 <= M <= LMS_W4A16_MAX_M;
 *                        [M, 2K] with the silu-mul activation flag: x = silu(gate) * up of its
 *                        halves gate | up (a SwiGLU MLP's down projection)
 *   qweight  [K, N / 8]  int32: word [k, j] packs columns 8j..8j+7 of row k; nibble i (bits
 *                        4i..4i+3) holds column 8j + (0, 2, 4, 6, 1, 3, 5, 7)[i]
 *   qzeros   [K / G, N / 8] int32, packed the same way
 *   scales   [K / G, N]  fp16, 16-byte aligned
 *   y        [M, N]      x's dtype, contiguous
 * W[k, n] = (q[k, n] - z[k / G, n]) * s[k / G, n]; x in fp16 (bf16 x is converted; the GEMV first
 * scales it down by a power of two where it is large). The GEMV sums products x * (q - z) in fp16
 * over 8-16 rows of K (inside one quantisation group), then scales them into fp32 sums (from 5 rows
 * of x on it scales each weight first); the GEMM multiplies fp16 weights on tensor cores.
 * Requirements: N % 8 == 0 (N <= 4194304), G % 16 == 0, K % G == 0.
 *
 * Workspace: the kernel may split K over several blocks; their fp32 partials live in a
 * caller-provided device buffer of lms_w4a16_workspace_bytes() bytes, which must be zero-filled once
 * before its first use (a zero slot means "not arrived yet"; the kernel leaves every slot it used at
 * zero again, so one buffer, as large as the largest need, serves all shapes).
 * Launches that share a workspace must be ordered (one stream); CUDA graphs may capture them.
 *
 * On compute capability 9.0 and later the kernel is launched with programmatic dependent launch:
 * it may start while the previous kernel on the stream finishes, reading only the (constant)
 * weights until that one has completed. LMSTATION_PDL=0 in the environment turns this off (read
 * once per device and process).
 */
#ifndef LMS_W4A16_H
#define LMS_W4A16_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LMS_API __declspec(dllexport)
#else
#define LMS_API __attribute__((visibility("default")))
#endif

#define LMS_W4A16_ABI_VERSION 6
#define LMS_W4A16_MAX_M 8

/* dtype flag for x and y */
#define LMS_DTYPE_F16 0
#define LMS_DTYPE_BF16 1

/* activation flag: what x is made of */
#define LMS_ACT_NONE 0
#define LMS_ACT_SILU_MUL 1

/* Return codes: 0 success, negative for a bad call, positive for a CUDA runtime error (its
 * cudaError_t value). lms_w4a16_error_string() says which. */
#define LMS_W4A16_OK 0
#define LMS_W4A16_ERR_SHAPE -1     /* M, N, K or G out of range */
#define LMS_W4A16_ERR_DTYPE -2     /* unknown dtype flag */
#define LMS_W4A16_ERR_ALIGN -3     /* scales not 16-byte aligned, or a null pointer */
#define LMS_W4A16_ERR_WORKSPACE -4 /* workspace smaller than lms_w4a16_workspace_bytes() */
#define LMS_W4A16_ERR_ACTIVATION -5 /* unknown activation flag */
#define LMS_W4A16_ERR_FUSION -6    /* a fusion the shape or the other arguments do not allow */

/* LMS_W4A16_ABI_VERSION of the built library (a prebuilt one may be older than the headers). */
LMS_API int lms_w4a16_abi_version(void);

/* Sets *bytes to the workspace lms_w4a16_gemv needs for this shape and split request (0:
 * automatic, as there) on the current device; 0 when it needs none. Returns an error code. */
LMS_API int lms_w4a16_workspace_bytes(int64_t m, int64_t n, int64_t k, int64_t group_size, int splits, int64_t* bytes);

/* What a decode step does around a linear, done by the GEMV itself (each saves a kernel launch,
 * which at batch 1 costs about as much as a small linear's weights take to stream):
 *
 * Prologue, the RMSNorm before a projection (norm_weight not NULL): the product takes
 *   h = x + residual (rounded to x's dtype; h = x without a residual),
 *   x' = (h / rms(h), rounded) * norm_weight (rounded), rms over each row of K in fp32,
 * and h goes to residual_out (with a residual), whole rows, written once. x, residual, residual_out
 * and norm_weight are 16-byte aligned [M, K] ([K]) in x's dtype; K % 8 == 0; not with silu-mul.
 *
 * Epilogue: + bias ([N], x's dtype, or NULL) on each output, rounded as a separate addition would.
 * Then, with q_heads > 0, the qkv projection of a decode step: the N = (q_heads + 2 kv_heads) *
 * head_dim outputs are q, k and v heads; q and k heads are rotated (the "rotate half" layout: pair
 * (j, j + head_dim / 2) by the row's cos[j], sin[j], [M, head_dim / 2] in x's dtype, in fp32), q
 * goes to y ([M, q_heads * head_dim]), k and v to the caches at the row's slot (an int64 [M]; a
 * negative slot writes nothing): k_cache[slot][kv head][:], v_cache likewise, contiguous rows of
 * x's dtype. head_dim must divide 256 (a column tile) and be even.
 *
 * The residual stream in fp32 (a decode step on one device: no reduce between ranks comes between
 * a projection and the next norm), which takes the split-K hand-over out of the projections that
 * feed it:
 *   x_f32 (with a norm and no residual): x is the hidden state h itself, fp32 [M, K], 16-byte
 *   aligned; the dtype flag still gives y's (and the norm weight's) dtype.
 *   accumulate (fp32 [M, N]; not with q_heads): y is not written (it may be NULL) and no workspace
 *   is used; every K slice adds its partial sums, slice 0 also the bias, to accumulate with atomic
 *   adds, so accumulate += x @ W (+ bias) in fp32. The order of the additions, and so the last bits
 *   of the sums, varies from run to run. */
typedef struct lms_w4a16_fusion {
  const void* norm_weight;
  const void* residual;
  void* residual_out;
  float eps;
  const void* bias;
  int q_heads, kv_heads, head_dim;
  const void* cos;
  const void* sin;
  const int64_t* slots;
  void* k_cache;
  void* v_cache;
  int x_f32;
  float* accumulate;
} lms_w4a16_fusion;

/* y = x @ W on `stream` (a cudaStream_t; NULL for the default stream) of the current device.
 * splits: how many blocks share K for each column tile; 0 picks it from the shape and the
 * device's multiprocessor count (the engine's choice); a positive value is clamped to what the
 * shape allows. fusion: the prologue and epilogue above, or NULL for none. Asynchronous: returns
 * once the kernel is queued. */
LMS_API int lms_w4a16_gemv(const void* x, const int32_t* qweight, const int32_t* qzeros, const void* scales,
                           void* y, int64_t m, int64_t n, int64_t k, int64_t group_size, int dtype,
                           int activation, const lms_w4a16_fusion* fusion, void* workspace,
                           int64_t workspace_bytes, int splits, void* stream);

/* The tensor-core GEMM, for any number of rows (meant for 9 to ~175: decode batches; the GEMV
 * serves fewer). x and W as for lms_w4a16_gemv (no activation flag); x 16-byte aligned, and
 * K % 64 == 0, G % 32 == 0. Its workspace (fp32 partials of K slices, summed by a second kernel)
 * needs no zero-filling; lms_w4a16_gemm_workspace_bytes() says its size (0: none), as above.
 * block_rows: rows of x a block takes (16, 32 or 64; 0 picks from M, the engine's choice). */
LMS_API int lms_w4a16_gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int64_t group_size, int splits,
                                           int block_rows, int64_t* bytes);
LMS_API int lms_w4a16_gemm(const void* x, const int32_t* qweight, const int32_t* qzeros, const void* scales,
                           void* y, int64_t m, int64_t n, int64_t k, int64_t group_size, int dtype,
                           void* workspace, int64_t workspace_bytes, int splits, int block_rows, void* stream);

/* A static, human-readable message for a return code. */
LMS_API const char* lms_w4a16_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* LMS_W4A16_H */
