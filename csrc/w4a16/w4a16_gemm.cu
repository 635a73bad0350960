// W4A16 GEMM on tensor cores for decode batches past the GEMV's (9 to ~128 rows of x): y = x @ W,
// W in the AWQ 4-bit "gemm" layout (w4a16.h).
//
// At these batch sizes the product is still bound by reading the weight: 16-bit weights move 4x
// the bytes, so streaming the 4-bit ones at a fraction of the bandwidth already beats them. The
// Triton GEMM spent its time widening words into tl.dot's layout (0.84x bf16 at 64 rows on an
// H100); here each weight is made once, in fp16, straight into a shared-memory tile that the
// tensor cores read as it lies.
//
// - Block tile: BM rows of x (16, 32 or 64: the template's MT m16 tiles; by default the fewest
//   that hold M, or 64) x 256 columns (32 words
//   of a row), stepping through K 64 rows at a time. The grid is (column tiles, row tiles, K
//   slices); K is sliced until the blocks fill the GPU, bounded so that the fp32 partials (written
//   and read back once) stay near the weight's own bytes; a second kernel sums the slices in
//   slice order (deterministic) and rounds to x's dtype.
// - Each step: every thread loads 8 words (one column of words, 8 rows apart) with their zero
//   points and scales, and 2 chunks of 8 values of x; the next step's loads fly while the tensor
//   cores work on this one. Dequantisation as in the GEMV (magic-number LOP3, HSUB2, HMUL2: the
//   weight (q - z) * s itself, in fp16), 8 columns stored with one 16-byte store; x in fp16 (bf16
//   is converted).
// - 8 warps, each 32 columns x BM rows: per 16 rows of K, two ldmatrix.x4.trans give the B
//   fragments of four 8-column tiles, one ldmatrix.x4 per 16 rows of x the A fragment, then
//   mma.sync m16n8k16 (fp16 in, fp32 accumulators). Rows of both tiles are padded by 16 bytes so
//   the 8 rows an ldmatrix phase reads fall in different banks.

#include "w4a16.h"
#include "w4a16_common.cuh"

#include <algorithm>

namespace {

using namespace lms;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBlockN = 256;              // columns of a tile
constexpr int kTileWords = kBlockN / 8;   // words of a row in a tile: one per lane
constexpr int kBlockK = 64;               // rows of K a step
constexpr int kWarpN = kBlockN / kWarps;  // 32 columns a warp: four m16n8 tiles across
constexpr int kPad = 8;                   // halves of padding a shared row
constexpr int kRowsPerThread = kBlockK / (kThreads / kTileWords);  // 8
constexpr int kBlocksPerSm = 2;

struct GemmParams {
  const void* x;
  const uint32_t* qweight;
  const uint32_t* qzeros;
  const uint4* scales;  // 8 halves (one word's columns) per uint4
  void* y;
  float* partials;  // [splits][M][N], with splits > 1
  int m, n, k, group, words, steps_per_split, splits;
};

// A thread's share of one step: its word of 8 rows, the zero points and scales of the step's two
// halves (rows 0-31, 32-63: one group each, the same one where groups are 64 rows or more), and
// its two chunks of x.
struct Step {
  uint32_t w[kRowsPerThread];
  uint32_t z[2];
  uint4 s[2];
  uint4 x[2];
};

template <int MT>
struct Tile {
  static constexpr int kRows = 16 * MT;
  static constexpr int kXChunks = kRows * kBlockK / 8;  // 16-byte chunks of x a step
};

__device__ __forceinline__ void load_weights(const GemmParams& p, int k0, int tile_word, int lane_word, int row0,
                                             Step& st) {
  const int word = tile_word + lane_word;
  const bool ok = word < p.words;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i)
    st.w[i] = ok ? __ldcs(p.qweight + static_cast<size_t>(k0 + row0 + 8 * i) * p.words + word) : 0u;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const size_t group = static_cast<size_t>((k0 + 32 * h) / p.group);
    st.z[h] = ok ? __ldg(p.qzeros + group * p.words + word) : 0u;
    st.s[h] = ok ? __ldg(p.scales + group * p.words + word) : make_uint4(0, 0, 0, 0);
  }
}

template <typename T>
__device__ __forceinline__ uint4 to_half8(uint4 v);
template <>
__device__ __forceinline__ uint4 to_half8<__half>(uint4 v) { return v; }
template <>
__device__ __forceinline__ uint4 to_half8<__nv_bfloat16>(uint4 v) {
  uint32_t in[4] = {v.x, v.y, v.z, v.w}, out[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 b;
    memcpy(&b, &in[i], 4);
    const __half2 h = __float22half2_rn(__bfloat1622float2(b));
    memcpy(&out[i], &h, 4);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

template <typename T, int MT>
__device__ __forceinline__ void load_x(const GemmParams& p, int m0, int k0, int tid, Step& st) {
  const T* x = static_cast<const T*>(p.x);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int chunk = tid + kThreads * j;
    const int row = chunk / (kBlockK / 8), col = (chunk % (kBlockK / 8)) * 8;
    const bool ok = chunk < Tile<MT>::kXChunks && m0 + row < p.m;
    st.x[j] = ok ? to_half8<T>(*reinterpret_cast<const uint4*>(x + static_cast<size_t>(m0 + row) * p.k + k0 + col))
                 : make_uint4(0, 0, 0, 0);
  }
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T, int MT>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) w4a16_gemm_kernel(const GemmParams p) {
  __shared__ __align__(16) __half ws[kBlockK][kBlockN + kPad];
  __shared__ __align__(16) __half xs[16 * MT][kBlockK + kPad];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tile_word = blockIdx.x * kTileWords, m0 = blockIdx.y * Tile<MT>::kRows;
  const int lane_word = tid % kTileWords, row0 = tid / kTileWords;
  const int step_begin = blockIdx.z * p.steps_per_split;
  const int steps = min(p.steps_per_split, p.k / kBlockK - step_begin);

  // The first step's weights are on their way while the previous kernel finishes.
  let_next_kernel_start();
  Step next;
  load_weights(p, step_begin * kBlockK, tile_word, lane_word, row0, next);
  wait_for_previous_kernel();
  load_x<T, MT>(p, m0, step_begin * kBlockK, tid, next);

  float acc[MT][4][4] = {};
  for (int s = 0; s < steps; ++s) {
    // This step's registers into shared memory: the weights made in fp16, x as it came.
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int h = i * 8 / 32;  // which half of the step (row0 + 8i < 32 for i < 4)
      __half2 zero[4], w[4];
      magic_pairs(next.z[h], zero);
      magic_pairs(next.w[i], w);
      const __half2* scale = reinterpret_cast<const __half2*>(&next.s[h]);
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = __hmul2(__hsub2(w[j], zero[j]), scale[j]);
      *reinterpret_cast<uint4*>(&ws[row0 + 8 * i][lane_word * 8]) =
          make_uint4(half2_bits(w[0]), half2_bits(w[1]), half2_bits(w[2]), half2_bits(w[3]));
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int chunk = tid + kThreads * j;
      if (chunk < Tile<MT>::kXChunks)
        *reinterpret_cast<uint4*>(&xs[chunk / (kBlockK / 8)][(chunk % (kBlockK / 8)) * 8]) = next.x[j];
    }
    __syncthreads();
    if (s + 1 < steps) {  // the next step's loads fly during this one's products
      const int k0 = (step_begin + s + 1) * kBlockK;
      load_weights(p, k0, tile_word, lane_word, row0, next);
      load_x<T, MT>(p, m0, k0, tid, next);
    }
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      uint32_t b[2][4];  // [pair of 8-column tiles] (b0, b1 of the first, b0, b1 of the second)
#pragma unroll
      for (int np = 0; np < 2; ++np)
        ldmatrix_x4_trans(b[np], &ws[kk * 16 + lane % 16][warp * kWarpN + np * 16 + (lane / 16) * 8]);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t a[4];
        ldmatrix_x4(a, &xs[mt * 16 + lane % 16][kk * 16 + (lane / 16) * 8]);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma_16816(acc[mt][nt], a, b[nt / 2][2 * (nt % 2)], b[nt / 2][2 * (nt % 2) + 1]);
      }
    }
    __syncthreads();
  }

  // Accumulator (mt, nt): rows mt * 16 + lane / 4 (+ 8), columns nt * 8 + 2 * (lane % 4) (+ 1).
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = m0 + mt * 16 + lane / 4 + 8 * half;
        const int col = blockIdx.x * kBlockN + warp * kWarpN + nt * 8 + 2 * (lane % 4);
        if (row >= p.m || col >= p.n) continue;
        const float v0 = acc[mt][nt][2 * half], v1 = acc[mt][nt][2 * half + 1];
        if (p.splits > 1) {
          *reinterpret_cast<float2*>(p.partials + (static_cast<size_t>(blockIdx.z) * p.m + row) * p.n + col) =
              make_float2(v0, v1);
        } else {
          T* y = static_cast<T*>(p.y) + static_cast<size_t>(row) * p.n + col;
          y[0] = from_float<T>(v0);
          y[1] = from_float<T>(v1);
        }
      }
}

// y = the sum of the slices' partials, in slice order, rounded once; 4 values a thread.
template <typename T>
__global__ void sum_slices_kernel(const float* __restrict__ partials, T* __restrict__ y, int64_t count, int splits) {
  let_next_kernel_start();
  wait_for_previous_kernel();
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= count) return;
  float4 total = __ldcg(reinterpret_cast<const float4*>(partials + i));
  for (int s = 1; s < splits; ++s) {
    const float4 v = __ldcg(reinterpret_cast<const float4*>(partials + static_cast<size_t>(s) * count + i));
    total.x += v.x;
    total.y += v.y;
    total.z += v.z;
    total.w += v.w;
  }
  y[i] = from_float<T>(total.x);
  y[i + 1] = from_float<T>(total.y);
  y[i + 2] = from_float<T>(total.z);
  y[i + 3] = from_float<T>(total.w);
}

// --- host side ----------------------------------------------------------------------------------

struct GemmPlan {
  int mt;  // m16 tiles a block: 1, 2 or 4
  int n_tiles, m_tiles, splits, steps_per_split;
  size_t workspace_bytes;
};

bool valid_gemm_shape(int64_t m, int64_t n, int64_t k, int64_t group) {
  return m >= 1 && m <= (int64_t{1} << 20) && n >= 8 && n % 8 == 0 && n <= (int64_t{1} << 24) && group >= 32 &&
         group % 32 == 0 && k % group == 0 && k % kBlockK == 0 && k >= kBlockK && k <= (int64_t{1} << 30);
}

GemmPlan make_gemm_plan(int64_t m, int64_t n, int64_t k, int requested_splits, int block_rows,
                        const DeviceInfo& device) {
  GemmPlan plan{};
  plan.mt = block_rows == 16 ? 1 : block_rows == 32 ? 2 : block_rows == 64 ? 4 : m <= 16 ? 1 : m <= 32 ? 2 : 4;
  plan.n_tiles = static_cast<int>(cdiv(n, kBlockN));
  plan.m_tiles = static_cast<int>(cdiv(m, 16 * plan.mt));
  const int64_t steps = k / kBlockK;
  int64_t splits = requested_splits;
  if (splits <= 0) {
    // As many K slices as fill one wave of resident blocks, while the partials (4 bytes an output
    // a slice, written and read once) cost at most twice the weight's bytes (K N / 2).
    const int64_t tiles = static_cast<int64_t>(plan.n_tiles) * plan.m_tiles;
    splits = std::max<int64_t>(1, std::min<int64_t>(kBlocksPerSm * device.sms / tiles, k / (8 * m)));
  }
  splits = clamp(splits, 1, steps);
  plan.steps_per_split = static_cast<int>(cdiv(steps, splits));
  plan.splits = static_cast<int>(cdiv(steps, plan.steps_per_split));  // no empty slice
  if (plan.splits > 1) plan.workspace_bytes = static_cast<size_t>(plan.splits) * m * n * sizeof(float);
  return plan;
}

template <typename T, int MT>
cudaError_t launch_gemm_mt(const GemmParams& p, const GemmPlan& plan, bool pdl, cudaStream_t stream) {
  const cudaError_t err = launch_kernel(w4a16_gemm_kernel<T, MT>, dim3(plan.n_tiles, plan.m_tiles, plan.splits),
                                        dim3(kThreads), 0, stream, pdl, p);
  if (err != cudaSuccess || plan.splits == 1) return err;
  const int64_t count = static_cast<int64_t>(p.m) * p.n;  // a multiple of 8 (N is)
  const int threads = 256;
  return launch_kernel(sum_slices_kernel<T>, dim3(static_cast<unsigned>(cdiv(count / 4, threads))), dim3(threads), 0,
                       stream, pdl, static_cast<const float*>(p.partials), static_cast<T*>(p.y), count, plan.splits);
}

template <typename T>
cudaError_t launch_gemm(const GemmParams& p, const GemmPlan& plan, bool pdl, cudaStream_t stream) {
  switch (plan.mt) {
    case 1: return launch_gemm_mt<T, 1>(p, plan, pdl, stream);
    case 2: return launch_gemm_mt<T, 2>(p, plan, pdl, stream);
    default: return launch_gemm_mt<T, 4>(p, plan, pdl, stream);
  }
}

}  // namespace

extern "C" {

LMS_API int lms_w4a16_gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int64_t group_size, int splits,
                                           int block_rows, int64_t* bytes) {
  if (!valid_gemm_shape(m, n, k, group_size)) return LMS_W4A16_ERR_SHAPE;
  if (!bytes) return LMS_W4A16_ERR_ALIGN;
  DeviceInfo device;
  const cudaError_t err = device_info(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  *bytes = static_cast<int64_t>(make_gemm_plan(m, n, k, splits, block_rows, device).workspace_bytes);
  return LMS_W4A16_OK;
}

LMS_API int lms_w4a16_gemm(const void* x, const int32_t* qweight, const int32_t* qzeros, const void* scales, void* y,
                           int64_t m, int64_t n, int64_t k, int64_t group_size, int dtype, void* workspace,
                           int64_t workspace_bytes, int splits, int block_rows, void* stream) {
  if (!valid_gemm_shape(m, n, k, group_size)) return LMS_W4A16_ERR_SHAPE;
  if (dtype != LMS_DTYPE_F16 && dtype != LMS_DTYPE_BF16) return LMS_W4A16_ERR_DTYPE;
  if (!x || !qweight || !qzeros || !scales || !y || reinterpret_cast<uintptr_t>(scales) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0)
    return LMS_W4A16_ERR_ALIGN;
  DeviceInfo device;
  cudaError_t err = device_info(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const GemmPlan plan = make_gemm_plan(m, n, k, splits, block_rows, device);
  if (plan.workspace_bytes > 0 &&
      (!workspace || workspace_bytes < static_cast<int64_t>(plan.workspace_bytes) ||
       reinterpret_cast<uintptr_t>(workspace) % 16 != 0))
    return LMS_W4A16_ERR_WORKSPACE;
  GemmParams p{};
  p.x = x;
  p.qweight = reinterpret_cast<const uint32_t*>(qweight);
  p.qzeros = reinterpret_cast<const uint32_t*>(qzeros);
  p.scales = static_cast<const uint4*>(scales);
  p.y = y;
  p.partials = static_cast<float*>(workspace);
  p.m = static_cast<int>(m);
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.group = static_cast<int>(group_size);
  p.words = static_cast<int>(n / 8);
  p.steps_per_split = plan.steps_per_split;
  p.splits = plan.splits;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  err = dtype == LMS_DTYPE_F16 ? launch_gemm<__half>(p, plan, device.pdl, s)
                               : launch_gemm<__nv_bfloat16>(p, plan, device.pdl, s);
  return err == cudaSuccess ? LMS_W4A16_OK : static_cast<int>(err);
}

}  // extern "C"
