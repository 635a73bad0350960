// W4A16 GEMV for small batches (1 <= M <= 8): y = x @ W, W in the AWQ 4-bit "gemm" layout.
// The ABI and the layout are described in w4a16.h.
//
// At decode batch sizes the product is bound by reading the weight (K * N / 2 bytes); everything
// here serves streaming it at memory bandwidth. Measured on an H100 (bf16, Llama-3-8B's linears,
// benchmarks/gpu_w4a16.py): at batch 1, 1.3 to 2.3 TB/s of weight bytes, one decoder layer's
// linears 2.97x faster than bf16 weights through cuBLAS.
//
// - Work split. A block owns a column tile of 32 int32 words per row (128 bytes, one cache line:
//   256 output columns) over a slice of K. The grid is (column tiles, K slices): when the tiles
//   alone cannot fill the GPU (N = 4096 gives 16), K is cut into as many slices as make the grid
//   a whole number of waves of resident blocks (a partial last wave would be a tail, during which
//   most SMs idle): one wave, or more where one would give a tile fewer than 4 slices (long
//   blocks). The last block of a tile to finish sums the slices' fp32 partials (in slice order:
//   deterministic) and writes y.
// - Coalescing. Each warp reads one row of the tile per load (32 consecutive words, one per
//   lane: one cache line); the block's 8 warps take chunks of R consecutive rows of K in turn.
//   Each thread loads its next chunk while it computes on the current one.
// - Dequantisation two weights per instruction. Or-ing a pair of nibble fields (one in each 16-bit
//   half of a word) into the bits of an fp16 power of two makes the half2 "magic + q" for two
//   columns at once; subtracting the zero point made the same way leaves q - z exactly, and one
//   multiply by the scale pair gives the weights: per 8 weights a shift, 4 LOP3, 4 HSUB2 and 4
//   HMUL2, then one HFMA2 per column pair and row of x. The nibble order (0 2 4 6 1 3 5 7) puts
//   columns 0, 2, 4, 6 in the low half-word and 1, 3, 5, 7 in the high one, so a pair is two
//   neighbouring columns. The products are summed in fp16 over a chunk (16 or 8 rows, one
//   quantisation group), then added into fp32 accumulators. (The fp32 version of this, one
//   weight per instruction, left the kernel issue-bound at ~1.55 TB/s in the engine.)
// - x is staged once per block in shared memory as fp16 pairs (x, x) ([row][m], so a thread reads
//   all M values of a row together), computed there from gate | up for a SwiGLU down projection
//   (which saves the launch of a separate silu-mul kernel and its round trip through memory); sums stay in registers and are reduced once at the end, across
//   warps through shared memory.
// - Programmatic dependent launch (Hopper and later): a kernel lets the next one start at once,
//   and waits for the previous one only after its first weights are on their way; only x and the
//   workspace depend on earlier kernels. So one GEMV's ramp-up hides under the last one's tail.

#include "w4a16.h"
#include "w4a16_common.cuh"

namespace {

using namespace lms;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;      // also the thread rows that take chunks of K in turn
constexpr int kTileWords = 32;             // int32 words of a row in a column tile: one per lane
constexpr int kTileCols = kTileWords * 8;  // output columns of a tile; == kThreads (one each at the end)
constexpr int kMaxSharedX = 32 * 1024;     // bytes of x staged per block (with red[], under the 48 KB default)
constexpr int kCounterBytes = 64 * 1024;   // the workspace's counter area, the same for every shape
static_assert(kTileCols == kThreads, "the final phase gives each thread one column of the tile");

// Rows per chunk: 16 while the accumulators are few (more bytes in flight per thread), else 8.
// Both divide every allowed group size (a multiple of 16).
__host__ __device__ constexpr int chunk_rows(int m) { return m <= 4 ? 16 : 8; }
// Blocks per SM the registers allow (the kernel's launch bounds): batch 1 needs fewer registers.
__host__ __device__ constexpr int blocks_per_sm(int m) { return m == 1 ? 3 : 2; }

struct Params {
  const void* x;
  const uint32_t* qweight;
  const uint32_t* qzeros;
  const uint4* scales;     // 8 halves (one word's columns) per uint4
  void* y;
  float* partials;         // [splits][M][n], with splits > 1
  unsigned int* counters;  // [column tiles], zero between launches
  int n, k, group, words, chunks, splits;
  bool silu_mul;  // x is [M, 2K], gate | up: the product takes silu(gate) * up
};

// What a thread needs for one chunk: its word of each of the R rows, the zero-point word and the
// 8 scales of the chunk's group.
template <int R>
struct Chunk {
  uint32_t w[R];
  uint32_t z;
  uint4 s;
};

template <int R>
__device__ __forceinline__ void load_chunk(const Params& p, int chunk, int word, Chunk<R>& c) {
  const int row0 = chunk * R;
  const uint32_t* rows = p.qweight + static_cast<size_t>(row0) * p.words + word;
#pragma unroll
  for (int r = 0; r < R; ++r) c.w[r] = __ldcs(rows + static_cast<size_t>(r) * p.words);  // read once: streaming
  const size_t group = static_cast<size_t>(row0 / p.group);
  c.z = __ldg(p.qzeros + group * p.words + word);
  c.s = __ldg(p.scales + group * p.words + word);
}

// acc[m][c] += sum over the chunk's rows of x[row][m] * W[row][c], for the thread's 8 columns.
// Per word: magic + q minus magic + z (exact: small integers), times the scale (the weight
// itself, so the fp16 sums stay at the size of the products), then one HFMA2 per column pair and
// row of x. The chunk's sums (R rows) are then added into the fp32 accumulators.
template <int M, int R>
__device__ __forceinline__ void compute_chunk(const Chunk<R>& ch, const __half2* __restrict__ x_rows,
                                              float (&acc)[M][8]) {
  __half2 zero[4], sums[M][4];
  magic_pairs(ch.z, zero);
  const __half2* scale = reinterpret_cast<const __half2*>(&ch.s);  // pair j: columns 2j, 2j + 1
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < 4; ++j) sums[m][j] = __float2half2_rn(0.0f);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    __half2 w[4];
    magic_pairs(ch.w[r], w);
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = __hmul2(__hsub2(w[j], zero[j]), scale[j]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const __half2 xv = x_rows[r * M + m];  // (x, x)
#pragma unroll
      for (int j = 0; j < 4; ++j) sums[m][j] = __hfma2(xv, w[j], sums[m][j]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 s = __half22float2(sums[m][j]);
      acc[m][2 * j] += s.x;
      acc[m][2 * j + 1] += s.y;
    }
}

template <typename T, int M>
__global__ void __launch_bounds__(kThreads, blocks_per_sm(M)) w4a16_gemv_kernel(const Params p) {
  constexpr int R = chunk_rows(M);
  extern __shared__ __half2 xs[];  // this block's slice of x: [row][m], each value twice (x, x)
  __shared__ float red[kWarps][kTileCols];
  __shared__ bool last_block;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tile = blockIdx.x, split = blockIdx.y;
  const int word = tile * kTileWords + lane;
  const bool active = word < p.words;
  const int c_begin = static_cast<int>(static_cast<int64_t>(split) * p.chunks / p.splits);
  const int c_end = static_cast<int>(static_cast<int64_t>(split + 1) * p.chunks / p.splits);
  const int row_begin = c_begin * R, rows = (c_end - c_begin) * R;

  // The first chunk's weights are on their way while the previous kernel finishes and x is staged.
  let_next_kernel_start();
  Chunk<R> cur, next;
  int chunk = c_begin + warp;
  if (active && chunk < c_end) load_chunk<R>(p, chunk, word, cur);
  wait_for_previous_kernel();

  const T* x = static_cast<const T*>(p.x);
  const size_t x_stride = p.silu_mul ? 2 * static_cast<size_t>(p.k) : p.k;
  for (int i = tid; i < rows * M; i += kThreads) {
    const int m = i / rows, r = i - m * rows;  // consecutive threads read consecutive x elements
    const T* x_row = x + m * x_stride + row_begin + r;
    float v = to_float(*x_row);
    if (p.silu_mul) v = v / (1.0f + __expf(-v)) * to_float(x_row[p.k]);  // silu(gate) * up
    xs[r * M + m] = __float2half2_rn(v);
  }
  __syncthreads();

  float acc[M][8];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[m][c] = 0.0f;
  if (active) {
    for (; chunk < c_end; chunk += kWarps) {
      if (chunk + kWarps < c_end) load_chunk<R>(p, chunk + kWarps, word, next);
      compute_chunk<M, R>(cur, xs + (chunk * R - row_begin) * M, acc);
      cur = next;
    }
  }

  // Reduce over the warps through shared memory, one row of x at a time; afterwards thread t
  // holds column t of the tile.
  float total[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int c = 0; c < 8; ++c) red[warp][lane * 8 + c] = acc[m][c];
    __syncthreads();
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += red[w][tid];
    total[m] = v;
    __syncthreads();
  }

  T* y = static_cast<T*>(p.y);
  const int col = tile * kTileCols + tid;
  const bool col_ok = col < p.n;
  if (p.splits == 1) {
    if (col_ok)
#pragma unroll
      for (int m = 0; m < M; ++m) y[static_cast<size_t>(m) * p.n + col] = from_float<T>(total[m]);
    return;
  }

  // Split K: publish this slice's partial; the tile's last block to arrive sums them all.
  if (col_ok)
#pragma unroll
    for (int m = 0; m < M; ++m) p.partials[(static_cast<size_t>(split) * M + m) * p.n + col] = total[m];
  __threadfence();  // the partial is visible device-wide before the counter says so
  __syncthreads();
  if (tid == 0) last_block = atomicAdd(&p.counters[tile], 1u) == static_cast<unsigned>(p.splits - 1);
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  if (col_ok) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = 0.0f;
      for (int s = 0; s < p.splits; ++s) v += __ldcg(&p.partials[(static_cast<size_t>(s) * M + m) * p.n + col]);
      y[static_cast<size_t>(m) * p.n + col] = from_float<T>(v);
    }
  }
  if (tid == 0) p.counters[tile] = 0;  // ready for the next launch
}

// --- host side ----------------------------------------------------------------------------------

struct Plan {
  int tiles, splits, chunks;
  size_t shared_bytes, workspace_bytes;
};

bool valid_shape(int64_t m, int64_t n, int64_t k, int64_t group) {
  return m >= 1 && m <= LMS_W4A16_MAX_M && n >= 8 && n % 8 == 0 &&
         cdiv(n, kTileCols) * static_cast<int64_t>(sizeof(unsigned)) <= kCounterBytes && group >= 16 &&
         group % 16 == 0 && k >= group && k % group == 0 && k <= (int64_t{1} << 30);
}

// Grid and workspace for a shape: independent of the pointers, so lms_w4a16_workspace_bytes and
// lms_w4a16_gemv always agree.
Plan make_plan(int64_t m, int64_t n, int64_t k, int requested_splits, const DeviceInfo& device) {
  Plan plan{};
  const int64_t rows_per_chunk = chunk_rows(static_cast<int>(m));
  plan.tiles = static_cast<int>(cdiv(n, kTileCols));
  plan.chunks = static_cast<int>(k / rows_per_chunk);
  int64_t splits = requested_splits;
  if (splits <= 0) {  // whole waves (see the top), each warp taking at least one chunk
    const int64_t resident = static_cast<int64_t>(blocks_per_sm(static_cast<int>(m))) * device.sms;
    const int64_t waves = cdiv(4 * plan.tiles, resident);
    splits = clamp(waves * resident / plan.tiles, 1, plan.chunks / kWarps);
  }
  // Each block's slice of x must fit its shared memory.
  const int64_t max_chunks_per_block = kMaxSharedX / (rows_per_chunk * m * static_cast<int64_t>(sizeof(__half2)));
  plan.splits = static_cast<int>(clamp(splits, cdiv(plan.chunks, max_chunks_per_block), plan.chunks));
  plan.shared_bytes = static_cast<size_t>(cdiv(plan.chunks, plan.splits) * rows_per_chunk * m) * sizeof(__half2);
  if (plan.splits > 1)  // counters first, at a fixed size: another shape's partials never land on them
    plan.workspace_bytes = kCounterBytes + static_cast<size_t>(plan.splits) * m * n * sizeof(float);
  return plan;
}

template <typename T, int M>
cudaError_t launch_m(const Params& p, const Plan& plan, bool pdl, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(plan.tiles, plan.splits);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = plan.shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, w4a16_gemv_kernel<T, M>, p);
}

template <typename T>
cudaError_t launch(int m, const Params& p, const Plan& plan, bool pdl, cudaStream_t stream) {
  switch (m) {
    case 1: return launch_m<T, 1>(p, plan, pdl, stream);
    case 2: return launch_m<T, 2>(p, plan, pdl, stream);
    case 3: return launch_m<T, 3>(p, plan, pdl, stream);
    case 4: return launch_m<T, 4>(p, plan, pdl, stream);
    case 5: return launch_m<T, 5>(p, plan, pdl, stream);
    case 6: return launch_m<T, 6>(p, plan, pdl, stream);
    case 7: return launch_m<T, 7>(p, plan, pdl, stream);
    default: return launch_m<T, 8>(p, plan, pdl, stream);
  }
}

}  // namespace

extern "C" {

LMS_API int lms_w4a16_abi_version(void) { return LMS_W4A16_ABI_VERSION; }

LMS_API int lms_w4a16_workspace_bytes(int64_t m, int64_t n, int64_t k, int64_t group_size, int splits, int64_t* bytes) {
  if (!valid_shape(m, n, k, group_size)) return LMS_W4A16_ERR_SHAPE;
  if (!bytes) return LMS_W4A16_ERR_ALIGN;
  DeviceInfo device;
  const cudaError_t err = device_info(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  *bytes = static_cast<int64_t>(make_plan(m, n, k, splits, device).workspace_bytes);
  return LMS_W4A16_OK;
}

LMS_API int lms_w4a16_gemv(const void* x, const int32_t* qweight, const int32_t* qzeros, const void* scales,
                           void* y, int64_t m, int64_t n, int64_t k, int64_t group_size, int dtype,
                           int activation, void* workspace, int64_t workspace_bytes, int splits,
                           void* stream) {
  if (!valid_shape(m, n, k, group_size)) return LMS_W4A16_ERR_SHAPE;
  if (dtype != LMS_DTYPE_F16 && dtype != LMS_DTYPE_BF16) return LMS_W4A16_ERR_DTYPE;
  if (activation != LMS_ACT_NONE && activation != LMS_ACT_SILU_MUL) return LMS_W4A16_ERR_ACTIVATION;
  if (!x || !qweight || !qzeros || !scales || !y || reinterpret_cast<uintptr_t>(scales) % 16 != 0)
    return LMS_W4A16_ERR_ALIGN;
  DeviceInfo device;
  cudaError_t err = device_info(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const Plan plan = make_plan(m, n, k, splits, device);
  if (plan.workspace_bytes > 0 && (!workspace || workspace_bytes < static_cast<int64_t>(plan.workspace_bytes)))
    return LMS_W4A16_ERR_WORKSPACE;

  Params p{};
  p.x = x;
  p.qweight = reinterpret_cast<const uint32_t*>(qweight);
  p.qzeros = reinterpret_cast<const uint32_t*>(qzeros);
  p.scales = static_cast<const uint4*>(scales);
  p.y = y;
  p.counters = static_cast<unsigned int*>(workspace);
  p.partials = plan.workspace_bytes > 0
                   ? reinterpret_cast<float*>(static_cast<char*>(workspace) + kCounterBytes)
                   : nullptr;
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.group = static_cast<int>(group_size);
  p.words = static_cast<int>(n / 8);
  p.chunks = plan.chunks;
  p.splits = plan.splits;
  p.silu_mul = activation == LMS_ACT_SILU_MUL;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  err = dtype == LMS_DTYPE_F16 ? launch<__half>(static_cast<int>(m), p, plan, device.pdl, s)
                               : launch<__nv_bfloat16>(static_cast<int>(m), p, plan, device.pdl, s);
  return err == cudaSuccess ? LMS_W4A16_OK : static_cast<int>(err);
}

LMS_API const char* lms_w4a16_error_string(int code) {
  switch (code) {
    case LMS_W4A16_OK: return "success";
    case LMS_W4A16_ERR_SHAPE:
      return "bad shape: need N % 8 == 0 and K % group_size == 0; the GEMV 1 <= M <= 8, N <= 4194304, "
             "group_size % 16 == 0; the GEMM K % 64 == 0, group_size % 32 == 0";
    case LMS_W4A16_ERR_DTYPE: return "bad dtype flag (0: float16, 1: bfloat16)";
    case LMS_W4A16_ERR_ALIGN: return "a null pointer, or scales (the GEMM: or x) not 16-byte aligned";
    case LMS_W4A16_ERR_WORKSPACE: return "workspace smaller than lms_w4a16_workspace_bytes()";
    case LMS_W4A16_ERR_ACTIVATION: return "bad activation flag (0: none, 1: silu-mul)";
    default:
      return code > 0 ? cudaGetErrorString(static_cast<cudaError_t>(code)) : "unknown error";
  }
}

}  // extern "C"
