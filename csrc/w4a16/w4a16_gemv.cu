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
//   most SMs idle): one wave, or more where one would give a tile fewer than 3 slices (long
//   blocks). The block of a tile's last slice sums the slices' fp32 partials (in slice order:
//   deterministic) and writes y. The others store their partials and leave: a partial's own bits
//   say that it has arrived (the workspace is zero between launches; a partial of +0 is stored as
//   -0), so there is no fence or counter between the last products and y (a fence and a counter
//   in every block, then the last one to arrive summing, decoded 1.5% slower at batch 1 on an
//   H100). The summing block waits only on blocks of lower index, which the GPU dispatches first.
//   The hand-over still costs about 6% of a batch-1 step (the summing block waits for the slowest
//   slice, then one more round trip to L2): builds that skip the wait ran that much faster. Where
//   the output goes into the fp32 residual stream (accumulate: o_proj and down), every slice adds
//   its partial there with atomic adds and leaves, so there is no hand-over at all: batch 1 decoded
//   416-423 tok/s against 392-397 with the hand-over (H100, Llama-3-8B, 2026-11-27).
// - Coalescing. Each warp reads one row of the tile per load (32 consecutive words, one per
//   lane: one cache line); the block's 8 warps take chunks of R consecutive rows of K in turn.
//   A thread holds a ring of S chunks in registers, all requested before it waits on the previous
//   kernel; each is refilled as soon as it has been used.
// - Dequantisation two weights per instruction. Or-ing a pair of nibble fields (one in each 16-bit
//   half of a word) into the bits of an fp16 power of two makes the half2 "magic + q" for two
//   columns at once; subtracting the zero point made the same way leaves q - z exactly: per 8
//   weights a shift, 4 LOP3 and 4 HSUB2, then one HFMA2 per column pair and row of x. The nibble
//   order (0 2 4 6 1 3 5 7) puts columns 0, 2, 4, 6 in the low half-word and 1, 3, 5, 7 in the
//   high one, so a pair is two neighbouring columns. The products x * (q - z) are summed in fp16
//   over a chunk (16 or 8 rows, inside one quantisation group), and the chunk's sum is multiplied
//   by the scales into fp32 accumulators (at M > 4 each weight is scaled instead: registers). The
//   main loop is ~21 instructions per word (SASS, M = 1); it was 28 with a scale multiply per
//   weight and the compiler's AND + OR pairs for each LOP3, without changing the time at batch 1
//   (not issue-bound: Nsight Compute shows the warps waiting on loads and barriers, ~50% of the
//   DRAM bandwidth on gate_up).
// - x is staged once in shared memory as fp16 pairs (x, x) ([row][m], so a thread reads all M
//   values of a row together), each warp staging the rows of its own chunks (no block barrier
//   between the previous kernel's end and the first products; the loads go out in batches),
//   computed there from gate | up for a SwiGLU down projection (which saves the launch of a
//   separate silu-mul kernel and its round trip through memory), scaled down by a power of two
//   when its largest value could overflow a chunk's fp16 sums. Staging the block's slice with
//   all threads, one load after another, then two barriers, cost ~4% of a batch-1 decode step
//   (H100, Llama-3-8B).
//   Sums stay in registers and are reduced once at the end, across warps through shared memory.
// - Programmatic dependent launch (Hopper and later): a kernel lets the next one start at once,
//   and waits for the previous one only after its first weights are on their way; only x and the
//   workspace depend on earlier kernels. So one GEMV's ramp-up hides under the last one's tail.
// - Fusions for decode steps (lms_w4a16_fusion, see w4a16.h): a layer's RMSNorm runs while x is
//   staged (every block first sums the squares of whole rows, a few KB read from L2), and the
//   block that finishes a column tile adds the bias and, for the qkv projection, rotates q and k
//   (a tile holds whole heads: the pair partner is a shared-memory read away) and stores k and v
//   into the cache. Each fusion is a launch fewer, worth ~2-3 us at batch 1.

#include <algorithm>

#include "w4a16.h"
#include "w4a16_common.cuh"

namespace {

using namespace lms;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;      // also the thread rows that take chunks of K in turn
constexpr int kTileWords = 32;             // int32 words of a row in a column tile: one per lane
constexpr int kTileCols = kTileWords * 8;  // output columns of a tile; == kThreads (one each at the end)
constexpr int kMaxSharedX = 32 * 1024;     // bytes of x staged per block (with red[], under the 48 KB default)
constexpr int64_t kMaxColumns = int64_t{1} << 22;  // N's bound, as lms_w4a16_error_string says
static_assert(kTileCols == kThreads, "the final phase gives each thread one column of the tile");

// How an instance streams the weight: rows of K per chunk (a thread's load, 4 bytes a row; a
// divisor of every allowed group size), chunks a thread holds in registers (all requested before
// waiting on the previous kernel, then each refilled as soon as it is used), and blocks per SM
// (the launch bounds: what the registers allow).
struct Tuning {
  int rows, stages, blocks;
};
// Measured in the engine at batch 1 (H100, Llama-3-8B shape, 2026-11-27): {16, 2, 3} 365 tok/s,
// {32, 2, 2} 369, {16, 4, 2} 357, {16, 3, 2} 379 and {8, 3, 3} 377 against {16, 2, 3}'s 407 on an
// H200: deeper rings at lower occupancy buy nothing. With x staged warp by warp: {16, 2, 3} 392.5,
// {8, 2, 4} 388.8, {16, 1, 4} 394 (H100, same call; within the spread of repeated runs).
constexpr Tuning kOneRowTuning = {16, 2, 3};  // M = 1: fewer registers, three blocks an SM
constexpr Tuning kSmallTuning = {16, 2, 2};   // M = 2..4
constexpr Tuning kLargeTuning = {8, 2, 2};    // M = 5..8: more accumulators, fewer rows

struct Params {
  const void* x;
  const uint32_t* qweight;
  const uint32_t* qzeros;
  const uint4* scales;     // 8 halves (one word's columns) per uint4
  void* y;
  float* partials;  // [splits - 1][M][n], with splits > 1: zero between launches (see publish)
  int n, k, group, words, chunks, splits;
  bool silu_mul;  // x is [M, 2K], gate | up: the product takes silu(gate) * up
  lms_w4a16_fusion fusion;  // all zero without one
};

template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

// 8 values from a 16-byte aligned address.
template <typename T>
__device__ __forceinline__ void load8(const T* at, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(at);
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_float(v[i]);
}

// The RMSNorm prologue's 1 / rms of each row of h = x (+ residual), or of x itself where it comes
// in fp32, over all of K: into inv[m] (partial: kWarps rows of LMS_W4A16_MAX_M floats of shared
// scratch).
template <typename T, int M>
__device__ __forceinline__ void inverse_rms(const Params& p, float (*partial)[LMS_W4A16_MAX_M], float* inv) {
  const T* x = static_cast<const T*>(p.x);
  const T* residual = static_cast<const T*>(p.fusion.residual);
  float squares[M];
#pragma unroll
  for (int m = 0; m < M; ++m) squares[m] = 0.0f;
  if (p.fusion.x_f32) {  // h itself, in fp32 (the residual stream)
#pragma unroll 2
    for (int at = threadIdx.x * 4; at < p.k; at += kThreads * 4) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float* row = static_cast<const float*>(p.x) + static_cast<size_t>(m) * p.k;
        const float4 h = *reinterpret_cast<const float4*>(row + at);
        squares[m] += h.x * h.x + h.y * h.y + h.z * h.z + h.w * h.w;
      }
    }
  } else {
#pragma unroll 2
    for (int at = threadIdx.x * 8; at < p.k; at += kThreads * 8) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float h[8], r[8];
        load8(x + static_cast<size_t>(m) * p.k + at, h);
        if (residual) {
          load8(residual + static_cast<size_t>(m) * p.k + at, r);
#pragma unroll
          for (int i = 0; i < 8; ++i) h[i] = round_to<T>(h[i] + r[i]);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) squares[m] += h[i] * h[i];
      }
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) squares[m] += __shfl_xor_sync(0xFFFFFFFFu, squares[m], offset);
    if (lane == 0) partial[warp][m] = squares[m];
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += partial[w][threadIdx.x];
    inv[threadIdx.x] = rsqrtf(total / p.k + p.fusion.eps);
  }
  __syncthreads();
}

// The operands of one value of the product's x: x; gate and up; or x, residual and norm weight.
template <typename T>
struct XOperands {
  float a;  // x (or gate), whether it comes as T or as fp32
  T b, w;
};

template <typename T>
__device__ __forceinline__ XOperands<T> load_x(const Params& p, int m, int row) {
  const T* x = static_cast<const T*>(p.x);
  XOperands<T> in{};
  if (p.silu_mul) {
    const T* gate = x + static_cast<size_t>(m) * 2 * p.k + row;
    in.a = to_float(gate[0]);
    in.b = gate[p.k];
    return in;
  }
  const size_t at = static_cast<size_t>(m) * p.k + row;
  in.a = p.fusion.x_f32 ? static_cast<const float*>(p.x)[at] : to_float(x[at]);
  if (p.fusion.norm_weight) {
    in.w = static_cast<const T*>(p.fusion.norm_weight)[row];
    if (p.fusion.residual) in.b = static_cast<const T*>(p.fusion.residual)[at];
  }
  return in;
}

// Row m, input `row` of the product's x, as the unfused ops would hand it over: x itself,
// silu(gate) * up, or the RMSNorm of x + residual (block (0, s) storing x + residual).
template <typename T>
__device__ __forceinline__ float x_value(const Params& p, const XOperands<T>& in, int m, int row, const float* inv) {
  if (p.silu_mul) {
    const float g = in.a;
    return g / (1.0f + __expf(-g)) * to_float(in.b);
  }
  float v = in.a;
  if (!p.fusion.norm_weight) return v;
  if (p.fusion.residual) {
    v = round_to<T>(v + to_float(in.b));
    if (blockIdx.x == 0) static_cast<T*>(p.fusion.residual_out)[static_cast<size_t>(m) * p.k + row] = from_float<T>(v);
  }
  return round_to<T>(round_to<T>(v * inv[m]) * to_float(in.w));
}

// The tile's outputs from their fp32 sums (thread t: column t of the tile), with the epilogue:
// + bias, then y; or for the qkv projection, rotary on q and k, q to y, k and v to the cache.
// Called by all threads of a block (it may synchronise); scratch holds M * kTileCols floats.
template <typename T, int M>
__device__ __forceinline__ void write_outputs(const Params& p, int tile, const float (&sums)[M], float* scratch) {
  const int tid = threadIdx.x, col = tile * kTileCols + tid;
  const bool col_ok = col < p.n;
  const T* bias = static_cast<const T*>(p.fusion.bias);
  float v[M];
#pragma unroll
  for (int m = 0; m < M; ++m) v[m] = round_to<T>(bias && col_ok ? round_to<T>(sums[m]) + to_float(bias[col]) : sums[m]);
  T* y = static_cast<T*>(p.y);
  const lms_w4a16_fusion& f = p.fusion;
  if (f.q_heads == 0) {
    if (col_ok)
#pragma unroll
      for (int m = 0; m < M; ++m) y[static_cast<size_t>(m) * p.n + col] = from_float<T>(v[m]);
    return;
  }
#pragma unroll
  for (int m = 0; m < M; ++m) scratch[m * kTileCols + tid] = v[m];
  __syncthreads();
  if (!col_ok) return;
  const int half = f.head_dim / 2, head = col / f.head_dim, j = col - head * f.head_dim;
  if (head < f.q_heads + f.kv_heads) {  // q or k: rotate the pair (j, j + half)
    const bool low = j < half;
    const int partner = low ? tid + half : tid - half, pair = low ? j : j - half;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float c = to_float(static_cast<const T*>(f.cos)[m * half + pair]);
      const float s = to_float(static_cast<const T*>(f.sin)[m * half + pair]);
      const float other = scratch[m * kTileCols + partner];
      v[m] = low ? v[m] * c - other * s : v[m] * c + other * s;
    }
  }
  if (head < f.q_heads) {
#pragma unroll
    for (int m = 0; m < M; ++m) y[static_cast<size_t>(m) * f.q_heads * f.head_dim + col] = from_float<T>(v[m]);
    return;
  }
  const bool is_key = head < f.q_heads + f.kv_heads;
  const int kv_head = head - f.q_heads - (is_key ? 0 : f.kv_heads);
  T* cache = static_cast<T*>(is_key ? f.k_cache : f.v_cache);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int64_t slot = f.slots[m];
    if (slot >= 0) cache[(slot * f.kv_heads + kv_head) * f.head_dim + j] = from_float<T>(v[m]);
  }
}

// The split-K hand-over's slots: a partial's bits are its own arrival flag (zero: not yet).
// Strong (relaxed, device-scope) accesses, so a waiting reader sees a store once it lands in L2.
__device__ __forceinline__ void publish(float* at, float v) {
  const uint32_t bits = __float_as_uint(v);
  asm volatile("st.relaxed.gpu.global.b32 [%0], %1;" ::"l"(at), "r"(bits == 0 ? 0x80000000u : bits) : "memory");
}
__device__ __forceinline__ uint32_t peek(const float* at) {
  uint32_t bits;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(bits) : "l"(at) : "memory");
  return bits;
}
__device__ __forceinline__ void clear(float* at) {
  asm volatile("st.relaxed.gpu.global.b32 [%0], %1;" ::"l"(at), "r"(0u) : "memory");
}

// The last slice's block: sums[m] = the partials of slices 0 .. splits - 2 (waiting for each to
// arrive, clearing each slot for the next launch) + its own, in slice order, for column col.
// Up to 16 loads in flight per thread (32 would spill registers at M = 1); slots [s][m] in order.
template <int M>
__device__ __forceinline__ void sum_partials(const Params& p, int col, float (&sums)[M]) {
  constexpr int kBatch = 16 / M * M;  // a multiple of M, so a load's row m is known at compile time
  float before[M];
#pragma unroll
  for (int m = 0; m < M; ++m) before[m] = 0.0f;
  const int count = (p.splits - 1) * M;
  float* slots = p.partials + col;
  for (int base = 0; base < count; base += kBatch) {
    uint32_t bits[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i)
      if (base + i < count) bits[i] = peek(slots + static_cast<size_t>(base + i) * p.n);
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if (base + i >= count) continue;
      float* slot = slots + static_cast<size_t>(base + i) * p.n;
      while (bits[i] == 0) bits[i] = peek(slot);
      before[i % M] += __uint_as_float(bits[i]);
      clear(slot);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) sums[m] = before[m] + sums[m];
}

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
// A chunk lies in one quantisation group, so the scale multiplies the chunk's sum once:
// sums = sum over rows of x * (q - z) in fp16 (magic + q minus magic + z: exact small integers;
// one HFMA2 per column pair and row of x), then acc += scale * sums in fp32. The staged x is scaled
// so that these sums cannot overflow (see stage_x). From 5 rows of x on, the scales would stay
// live across the chunk and spill registers: there each weight is scaled as it is made.
template <int M, int R>
__device__ __forceinline__ void compute_chunk(const Chunk<R>& ch, const __half2* __restrict__ x_rows,
                                              float (&acc)[M][8]) {
  constexpr bool kFoldScale = M <= 4;
  const __half2* scale = reinterpret_cast<const __half2*>(&ch.s);  // pair j: columns 2j, 2j + 1
  __half2 zero[4], sums[M][4];
  magic_pairs(ch.z, zero);
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < 4; ++j) sums[m][j] = __float2half2_rn(0.0f);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    __half2 w[4];
    magic_pairs(ch.w[r], w);
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = kFoldScale ? __hsub2(w[j], zero[j]) : __hmul2(__hsub2(w[j], zero[j]), scale[j]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const __half2 xv = x_rows[r * M + m];  // (x, x)
#pragma unroll
      for (int j = 0; j < 4; ++j) sums[m][j] = __hfma2(xv, w[j], sums[m][j]);
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 sc = kFoldScale ? __half22float2(scale[j]) : make_float2(1.0f, 1.0f);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float2 s = __half22float2(sums[m][j]);
      acc[m][2 * j] = fmaf(sc.x, s.x, acc[m][2 * j]);
      acc[m][2 * j + 1] = fmaf(sc.y, s.y, acc[m][2 * j + 1]);
    }
  }
}

// Stages the x of a warp's chunks (first, first + kWarps, ... before c_end) into its xs as fp16
// pairs (x, x) * 2^-e ([chunk of the warp][row][m]) and returns 2^e: the smallest power of two (at
// least 1) that brings every |x| under 4096 / R, so a chunk's fp16 sum of R products x * (q - z),
// |q - z| <= 15, stays under 65504. The result is multiplied back in fp32. (Activations that large
// are rare: usually e = 0 and x is staged as it is.) Warp by warp, with no block barrier but the
// RMSNorm's, and the loads in batches of kBatch a lane: a chain of round trips to L2 here holds up
// the weights. With a norm, the first batch is requested before the sums of squares are, so both
// wait on L2 together. Called by all threads of the block.
template <typename T, int M, int R>
__device__ __forceinline__ float stage_x(const Params& p, __half2* xs, int first, int c_end,
                                         float (*scratch)[LMS_W4A16_MAX_M], float* inv) {
  constexpr int kBatch = 4;
  constexpr int kChunkValues = R * M;
  const int lane = threadIdx.x % 32;
  const int values = first < c_end ? (c_end - first + kWarps - 1) / kWarps * kChunkValues : 0;
  float* staged = reinterpret_cast<float*>(xs);  // fp32 first, in place: a float is a half2's size
  float largest = 0.0f;
  XOperands<T> in[kBatch];
  // Value i of the warp: chunk c, then row m of x, then row r of the chunk (lanes read along x).
  const auto row_of = [&](int i) { return (first + i / kChunkValues * kWarps) * R + i % R; };
  const auto load_batch = [&](int base) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = base + 32 * u;
      if (i < values) in[u] = load_x<T>(p, (i % kChunkValues) / R, row_of(i));
    }
  };
  load_batch(lane);
  if (p.fusion.norm_weight) inverse_rms<T, M>(p, scratch, inv);
  for (int base = lane; base < values; base += 32 * kBatch) {
    if (base != lane) load_batch(base);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = base + 32 * u;
      if (i >= values) continue;
      const int c = i / kChunkValues, m = (i % kChunkValues) / R, r = i % R;
      const float v = x_value<T>(p, in[u], m, row_of(i), inv);
      staged[c * kChunkValues + r * M + m] = v;
      largest = fmaxf(largest, fabsf(v));
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) largest = fmaxf(largest, __shfl_xor_sync(0xFFFFFFFFu, largest, offset));
  constexpr float kLimit = 4096.0f / R;
  int e = 0;
  if (largest > kLimit) frexpf(largest / kLimit, &e);  // largest / kLimit <= 2^e
  const float down = ldexpf(1.0f, -e);
  __syncwarp();
  for (int i = lane; i < values; i += 32) xs[i] = __float2half2_rn(staged[i] * down);
  __syncwarp();
  return ldexpf(1.0f, e);
}

template <typename T, int M, int R, int S, int B>
__global__ void __launch_bounds__(kThreads, B) w4a16_gemv_kernel(const Params p) {
  extern __shared__ __half2 xs[];  // the x of each warp's chunks (see stage_x), each value twice (x, x)
  __shared__ float red[kWarps][kTileCols];
  __shared__ float inv_rms[LMS_W4A16_MAX_M];
  static_assert(M <= kWarps, "write_outputs keeps M rows of the tile in red[]");

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tile = blockIdx.x, split = blockIdx.y;
  const int word = tile * kTileWords + lane;
  const bool active = word < p.words;
  const int c_begin = static_cast<int>(static_cast<int64_t>(split) * p.chunks / p.splits);
  const int c_end = static_cast<int>(static_cast<int64_t>(split + 1) * p.chunks / p.splits);
  const int warp_chunks = (c_end - c_begin + kWarps - 1) / kWarps;  // at most, a warp

  // The first S chunks' weights are on their way while the previous kernel finishes and x is
  // staged. Warp w takes chunks w, w + kWarps, ... of the block's slice.
  let_next_kernel_start();
  Chunk<R> ring[S];
  const int first = c_begin + warp;
#pragma unroll
  for (int s = 0; s < S; ++s)
    if (active && first + s * kWarps < c_end) load_chunk<R>(p, first + s * kWarps, word, ring[s]);
  wait_for_previous_kernel();

  __half2* warp_xs = xs + warp * warp_chunks * R * M;
  float(*norm_scratch)[LMS_W4A16_MAX_M] = reinterpret_cast<float(*)[LMS_W4A16_MAX_M]>(&red[0][0]);
  const float x_scale = stage_x<T, M, R>(p, warp_xs, first, c_end, norm_scratch, inv_rms);

  float acc[M][8];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[m][c] = 0.0f;
  if (active) {
    for (int base = first; base < c_end; base += S * kWarps) {
#pragma unroll
      for (int s = 0; s < S; ++s) {  // unrolled: the ring stays in registers
        const int chunk = base + s * kWarps;
        if (chunk < c_end) {
          compute_chunk<M, R>(ring[s], warp_xs + (chunk - first) / kWarps * R * M, acc);
          if (chunk + S * kWarps < c_end) load_chunk<R>(p, chunk + S * kWarps, word, ring[s]);
        }
      }
    }
  }

  // Reduce over the warps through shared memory, one row of x at a time; afterwards thread t
  // holds column t of the tile.
  float total[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int c = 0; c < 8; ++c) red[warp][lane * 8 + c] = acc[m][c] * x_scale;  // x was staged scaled by 1 / x_scale
    __syncthreads();
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += red[w][tid];
    total[m] = v;
    __syncthreads();
  }

  const int col = tile * kTileCols + tid;
  const bool col_ok = col < p.n;
  if (p.fusion.accumulate) {  // the fp32 residual stream: no hand-over, each slice adds its part
    const T* bias = static_cast<const T*>(p.fusion.bias);
    if (col_ok)
#pragma unroll
      for (int m = 0; m < M; ++m)
        atomicAdd(p.fusion.accumulate + static_cast<size_t>(m) * p.n + col,
                  split == 0 && bias ? total[m] + to_float(bias[col]) : total[m]);
    return;
  }
  if (p.splits == 1) {
    write_outputs<T, M>(p, tile, total, &red[0][0]);
    return;
  }

  // Split K: publish this slice's partial, or, in the tile's last slice, sum them all.
  if (split < p.splits - 1) {
    if (col_ok)
#pragma unroll
      for (int m = 0; m < M; ++m) publish(p.partials + (static_cast<size_t>(split) * M + m) * p.n + col, total[m]);
    return;
  }
  if (col_ok) sum_partials<M>(p, col, total);
  write_outputs<T, M>(p, tile, total, &red[0][0]);
}

// --- host side ----------------------------------------------------------------------------------

struct Plan {
  int tiles, splits, chunks;
  size_t shared_bytes, workspace_bytes;
};

bool valid_shape(int64_t m, int64_t n, int64_t k, int64_t group) {
  return m >= 1 && m <= LMS_W4A16_MAX_M && n >= 8 && n % 8 == 0 && n <= kMaxColumns && group >= 16 &&
         group % 16 == 0 && k >= group && k % group == 0 && k <= (int64_t{1} << 30);
}

// Grid and workspace for a shape: independent of the pointers, so lms_w4a16_workspace_bytes and
// lms_w4a16_gemv always agree.
Tuning tuning_for(int64_t m) { return m == 1 ? kOneRowTuning : m <= 4 ? kSmallTuning : kLargeTuning; }

Plan make_plan(int64_t m, int64_t n, int64_t k, int requested_splits, const DeviceInfo& device) {
  Plan plan{};
  const Tuning tuning = tuning_for(m);
  const int64_t rows_per_chunk = tuning.rows;
  plan.tiles = static_cast<int>(cdiv(n, kTileCols));
  plan.chunks = static_cast<int>(k / rows_per_chunk);
  int64_t splits = requested_splits;
  if (splits <= 0) {  // whole waves (see the top), each warp taking at least one chunk
    const int64_t resident = static_cast<int64_t>(tuning.blocks) * device.sms;
    const int64_t waves = cdiv(3 * plan.tiles, resident);
    splits = clamp(waves * resident / plan.tiles, 1, plan.chunks / kWarps);
    // Then as few slices as keep the slowest warp's share: a block deals its chunks to its warps,
    // so Llama-3-8B's o_proj in 24 slices (10.7 chunks a block) leaves some warps 2 chunks and
    // others 1, where 16 slices give every warp 2 with a third fewer blocks (batch 1 decoded
    // 428.8-429.4 tok/s against 423.0 in one call of an H100; down's 24 slices stay at 23).
    const int64_t slowest = cdiv(cdiv(plan.chunks, std::max<int64_t>(splits, 1)), kWarps);
    splits = cdiv(plan.chunks, slowest * kWarps);
  }
  // Each block's slice of x must fit its shared memory (a warp's share rounded up).
  const int64_t max_chunks_per_block = kMaxSharedX / (rows_per_chunk * m * static_cast<int64_t>(sizeof(__half2)));
  plan.splits = static_cast<int>(clamp(splits, cdiv(plan.chunks, max_chunks_per_block - kWarps), plan.chunks));
  plan.shared_bytes =
      static_cast<size_t>(kWarps * cdiv(cdiv(plan.chunks, plan.splits), kWarps) * rows_per_chunk * m) * sizeof(__half2);
  if (plan.splits > 1) plan.workspace_bytes = static_cast<size_t>(plan.splits - 1) * m * n * sizeof(float);
  return plan;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// LMS_W4A16_OK, or why the fusion does not fit the call (see w4a16.h).
int check_fusion(const lms_w4a16_fusion& f, int64_t n, int64_t k, const void* x, int activation) {
  if (f.norm_weight) {
    if (activation != LMS_ACT_NONE || k % 8 != 0) return LMS_W4A16_ERR_FUSION;
    if (!aligned16(x) || !aligned16(f.norm_weight)) return LMS_W4A16_ERR_ALIGN;
    if (f.residual && (!f.residual_out || !aligned16(f.residual) || !aligned16(f.residual_out)))
      return LMS_W4A16_ERR_ALIGN;
  } else if (f.residual || f.residual_out) {
    return LMS_W4A16_ERR_FUSION;  // a residual belongs to the norm
  }
  if (f.x_f32 && (!f.norm_weight || f.residual)) return LMS_W4A16_ERR_FUSION;
  if (f.accumulate && f.q_heads != 0) return LMS_W4A16_ERR_FUSION;
  if (f.q_heads < 0 || (f.q_heads == 0 && (f.kv_heads != 0 || f.head_dim != 0))) return LMS_W4A16_ERR_FUSION;
  if (f.q_heads > 0) {
    const int d = f.head_dim;
    if (d < 2 || d % 2 != 0 || kTileCols % d != 0 || f.kv_heads <= 0 ||
        (static_cast<int64_t>(f.q_heads) + 2 * static_cast<int64_t>(f.kv_heads)) * d != n)
      return LMS_W4A16_ERR_FUSION;
    if (!f.cos || !f.sin || !f.slots || !f.k_cache || !f.v_cache) return LMS_W4A16_ERR_ALIGN;
  }
  return LMS_W4A16_OK;
}

template <typename T, int M, int R, int S, int B>
cudaError_t launch_m(const Params& p, const Plan& plan, bool pdl, cudaStream_t stream) {
  return launch_kernel(w4a16_gemv_kernel<T, M, R, S, B>, dim3(plan.tiles, plan.splits), dim3(kThreads),
                       plan.shared_bytes, stream, pdl, p);
}

template <typename T>
cudaError_t launch(int m, const Params& p, const Plan& plan, bool pdl, cudaStream_t stream) {
  switch (m) {
#define LMS_TUNED(m, t) launch_m<T, m, t.rows, t.stages, t.blocks>(p, plan, pdl, stream)
    case 1: return LMS_TUNED(1, kOneRowTuning);
    case 2: return LMS_TUNED(2, kSmallTuning);
    case 3: return LMS_TUNED(3, kSmallTuning);
    case 4: return LMS_TUNED(4, kSmallTuning);
    case 5: return LMS_TUNED(5, kLargeTuning);
    case 6: return LMS_TUNED(6, kLargeTuning);
    case 7: return LMS_TUNED(7, kLargeTuning);
    default: return LMS_TUNED(8, kLargeTuning);
#undef LMS_TUNED
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
                           int activation, const lms_w4a16_fusion* fusion, void* workspace,
                           int64_t workspace_bytes, int splits, void* stream) {
  if (!valid_shape(m, n, k, group_size)) return LMS_W4A16_ERR_SHAPE;
  if (dtype != LMS_DTYPE_F16 && dtype != LMS_DTYPE_BF16) return LMS_W4A16_ERR_DTYPE;
  if (activation != LMS_ACT_NONE && activation != LMS_ACT_SILU_MUL) return LMS_W4A16_ERR_ACTIVATION;
  const lms_w4a16_fusion none = {};
  const lms_w4a16_fusion& f = fusion ? *fusion : none;
  if (!x || !qweight || !qzeros || !scales || !(y || f.accumulate) || !aligned16(scales)) return LMS_W4A16_ERR_ALIGN;
  const int fusion_check = check_fusion(f, n, k, x, activation);
  if (fusion_check != LMS_W4A16_OK) return fusion_check;
  DeviceInfo device;
  cudaError_t err = device_info(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const Plan plan = make_plan(m, n, k, splits, device);
  if (!f.accumulate && plan.workspace_bytes > 0 &&
      (!workspace || workspace_bytes < static_cast<int64_t>(plan.workspace_bytes)))
    return LMS_W4A16_ERR_WORKSPACE;

  Params p{};
  p.x = x;
  p.qweight = reinterpret_cast<const uint32_t*>(qweight);
  p.qzeros = reinterpret_cast<const uint32_t*>(qzeros);
  p.scales = static_cast<const uint4*>(scales);
  p.y = y;
  p.partials = static_cast<float*>(workspace);
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.group = static_cast<int>(group_size);
  p.words = static_cast<int>(n / 8);
  p.chunks = plan.chunks;
  p.splits = plan.splits;
  p.silu_mul = activation == LMS_ACT_SILU_MUL;
  p.fusion = f;
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
    case LMS_W4A16_ERR_ALIGN:
      return "a null pointer, or scales (the GEMM: or x; with a norm: x, residual, residual_out, norm_weight) "
             "not 16-byte aligned";
    case LMS_W4A16_ERR_WORKSPACE: return "workspace smaller than lms_w4a16_workspace_bytes()";
    case LMS_W4A16_ERR_ACTIVATION: return "bad activation flag (0: none, 1: silu-mul)";
    case LMS_W4A16_ERR_FUSION:
      return "bad fusion: a norm needs K % 8 == 0 and no activation, a residual or fp32 x needs a norm (fp32 x "
             "no residual); rotary needs an even head_dim dividing 256 and N == (q_heads + 2 kv_heads) * "
             "head_dim, and no accumulate";
    default:
      return code > 0 ? cudaGetErrorString(static_cast<cudaError_t>(code)) : "unknown error";
  }
}

}  // extern "C"
