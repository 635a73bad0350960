/*
 * gemv.c - weight-streaming y = x @ W^T (+ bias) for small batches (decode) on CPU.
 *
 * At batch 1..16 a linear layer is bound by reading W from DRAM, so the kernels
 * stream a pre-packed weight exactly once per call, with up to 8 batch rows'
 * fp32 accumulators in registers; larger batches reuse each L1-sized block of
 * the weight for all their rows while the next block streams in.
 *
 * Packed layouts (built by the caller once at load time, rows zero-padded to a
 * multiple of TILE, bf16 columns zero-padded to an even count):
 *   bf16: [ntiles][in_pairs][TILE][2]  (the VNNI pair layout vdpbf16ps consumes)
 *   fp32: [ntiles][in][TILE]
 * so each 32-row tile is one contiguous stream and splitting tiles across
 * threads splits the bytes evenly.
 *
 * Instruction sets, picked at run time: AVX-512 BF16 (vdpbf16ps; fp32 uses
 * AVX-512F), AVX2+FMA, and portable C. Only GNU-compatible compilers (gcc,
 * clang, MinGW) get the SIMD paths; any other compiler builds the portable path.
 *
 * Threads: the library owns none. Two spinning pools on the same cores fight:
 * measured on 2 cores, a private pthread pool (spin 200 us, then futex sleep)
 * made a torch parallel op issued right after a call 20x slower and a decode
 * step 3.5x slower. So the caller hands in the entry points of the OpenMP
 * runtime torch already runs (libgomp's GOMP_parallel ABI, also exported by
 * LLVM's and Intel's runtimes on Linux) and the kernel runs inside torch's
 * pool, whose workers are already awake between torch's own ops. Without them
 * (Windows builds of torch, another parallel backend) it runs on the calling
 * thread: pthreads are not used anywhere, so nothing here is POSIX-only.
 *
 * Plain C ABI, no torch headers: the built library survives torch upgrades.
 */
#include "gemv.h"

#define TILE 32  /* output rows per packed tile */
#define MIN_PARALLEL_BYTES (128 * 1024)  /* below this, waking a thread costs more than it saves */
/* Software prefetch distance in the weight stream: +4-7% over the hardware
 * prefetcher alone at batch 1-16 (AVX-512 path). */
#define PREFETCH_BYTES 2048

typedef struct job job_t;
struct job {
    const void *x;
    int64_t ldx, nb, in;
    const void *w;
    int64_t out;
    void *y;
    int64_t ldy, ntiles;
    const void *bias; /* [out] of y's dtype, or NULL */
    void (*tiles)(const job_t *, int64_t, int64_t); /* computes tiles [t0, t1) */
};

static inline int tile_rows(const job_t *j, int64_t t)
{
    int64_t left = j->out - t * TILE;
    return (int)(left < TILE ? left : TILE);
}

/* Writes a tile's fp32 results (nb rows x TILE) plus the bias to y, converting when y is bf16. */
static void store_tile(const job_t *j, int64_t t, int64_t b0, int nb, const float *acc, int bf16)
{
    int n = tile_rows(j, t);
    float bias[TILE] = {0};
    if (j->bias)
        for (int r = 0; r < n; r++)
            bias[r] = bf16 ? bf16_to_f32(((const uint16_t *)j->bias)[t * TILE + r]) : ((const float *)j->bias)[t * TILE + r];
    for (int b = 0; b < nb; b++) {
        const float *a = acc + b * TILE;
        if (bf16) {
            uint16_t *y = (uint16_t *)j->y + (b0 + b) * j->ldy + t * TILE;
            for (int r = 0; r < n; r++) y[r] = f32_to_bf16(a[r] + bias[r]);
        } else {
            float *y = (float *)j->y + (b0 + b) * j->ldy + t * TILE;
            for (int r = 0; r < n; r++) y[r] = a[r] + bias[r];
        }
    }
}

/* ------------------------------------------------------------------ portable */

#define NB_PORTABLE 4

static void tiles_bf16_portable(const job_t *j, int64_t t0, int64_t t1)
{
    const int64_t kp = (j->in + 1) / 2;
    for (int64_t t = t0; t < t1; t++) {
        const uint16_t *wt = (const uint16_t *)j->w + t * kp * 2 * TILE;
        for (int64_t b0 = 0; b0 < j->nb; b0 += NB_PORTABLE) {
            int nb = (int)(j->nb - b0 < NB_PORTABLE ? j->nb - b0 : NB_PORTABLE);
            const uint16_t *x = (const uint16_t *)j->x + b0 * j->ldx;
            float acc[NB_PORTABLE][TILE] = {{0}};
            for (int64_t p = 0; p < kp; p++) {
                const uint16_t *wp = wt + p * 2 * TILE;
                float w0[TILE], w1[TILE];
                for (int r = 0; r < TILE; r++) {
                    w0[r] = bf16_to_f32(wp[2 * r]);
                    w1[r] = bf16_to_f32(wp[2 * r + 1]);
                }
                for (int b = 0; b < nb; b++) {
                    float x0 = bf16_to_f32(x[b * j->ldx + 2 * p]);
                    float x1 = 2 * p + 1 < j->in ? bf16_to_f32(x[b * j->ldx + 2 * p + 1]) : 0.0f;
                    for (int r = 0; r < TILE; r++) acc[b][r] += w0[r] * x0 + w1[r] * x1;
                }
            }
            store_tile(j, t, b0, nb, acc[0], 1);
        }
    }
}

static void tiles_f32_portable(const job_t *j, int64_t t0, int64_t t1)
{
    for (int64_t t = t0; t < t1; t++) {
        const float *wt = (const float *)j->w + t * j->in * TILE;
        for (int64_t b0 = 0; b0 < j->nb; b0 += NB_PORTABLE) {
            int nb = (int)(j->nb - b0 < NB_PORTABLE ? j->nb - b0 : NB_PORTABLE);
            const float *x = (const float *)j->x + b0 * j->ldx;
            float acc[NB_PORTABLE][TILE] = {{0}};
            for (int64_t k = 0; k < j->in; k++) {
                const float *wk = wt + k * TILE;
                for (int b = 0; b < nb; b++) {
                    float xk = x[b * j->ldx + k];
                    for (int r = 0; r < TILE; r++) acc[b][r] += wk[r] * xk;
                }
            }
            store_tile(j, t, b0, nb, acc[0], 0);
        }
    }
}

#if LMS_X86
/* ---------------------------------------------------------------- AVX2 + FMA */

#define NB_AVX2 3  /* 3 batch rows x 4 ymm accumulators + temporaries fit 16 ymm */

/* One tile for nb (compile-time after inlining) batch rows. A bf16 pair (w_k, w_k+1)
 * sits in one 32-bit lane, so w_k = lane << 16 and w_k+1 = lane & 0xffff0000. */
T_AVX2 static inline __attribute__((always_inline)) void
tile_bf16_avx2(const job_t *j, int64_t t, int64_t b0, const int nb)
{
    const int64_t kp = (j->in + 1) / 2, kfull = j->in / 2;
    const uint16_t *wt = (const uint16_t *)j->w + t * kp * 2 * TILE;
    const uint16_t *x = (const uint16_t *)j->x + b0 * j->ldx;
    const __m256i hi_mask = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[NB_AVX2][4];
    for (int b = 0; b < nb; b++)
        for (int q = 0; q < 4; q++) acc[b][q] = _mm256_setzero_ps();
    for (int64_t p = 0; p < kp; p++) {
        __m256 x0[NB_AVX2], x1[NB_AVX2];
        for (int b = 0; b < nb; b++) {
            const uint16_t *xb = x + b * j->ldx + 2 * p;
            x0[b] = _mm256_set1_ps(bf16_to_f32(xb[0]));
            x1[b] = _mm256_set1_ps(p < kfull ? bf16_to_f32(xb[1]) : 0.0f);
        }
        for (int q = 0; q < 4; q++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(wt + p * 2 * TILE + q * 16));
            __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
            __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(raw, hi_mask));
            for (int b = 0; b < nb; b++)
                acc[b][q] = _mm256_fmadd_ps(wo, x1[b], _mm256_fmadd_ps(we, x0[b], acc[b][q]));
        }
    }
    float out[NB_AVX2 * TILE];
    for (int b = 0; b < nb; b++)
        for (int q = 0; q < 4; q++) _mm256_storeu_ps(out + b * TILE + q * 8, acc[b][q]);
    store_tile(j, t, b0, nb, out, 1);
}

T_AVX2 static inline __attribute__((always_inline)) void
tile_f32_avx2(const job_t *j, int64_t t, int64_t b0, const int nb)
{
    const float *wt = (const float *)j->w + t * j->in * TILE;
    const float *x = (const float *)j->x + b0 * j->ldx;
    __m256 acc[NB_AVX2][4];
    for (int b = 0; b < nb; b++)
        for (int q = 0; q < 4; q++) acc[b][q] = _mm256_setzero_ps();
    for (int64_t k = 0; k < j->in; k++) {
        const float *wk = wt + k * TILE;
        __m256 w[4];
        for (int q = 0; q < 4; q++) w[q] = _mm256_loadu_ps(wk + q * 8);
        for (int b = 0; b < nb; b++) {
            __m256 xb = _mm256_broadcast_ss(x + b * j->ldx + k);
            for (int q = 0; q < 4; q++) acc[b][q] = _mm256_fmadd_ps(w[q], xb, acc[b][q]);
        }
    }
    float out[NB_AVX2 * TILE];
    for (int b = 0; b < nb; b++)
        for (int q = 0; q < 4; q++) _mm256_storeu_ps(out + b * TILE + q * 8, acc[b][q]);
    store_tile(j, t, b0, nb, out, 0);
}

#define DEFINE_TILES_AVX2(name, tile)                                          \
    T_AVX2 static void name(const job_t *j, int64_t t0, int64_t t1)            \
    {                                                                          \
        for (int64_t t = t0; t < t1; t++)                                      \
            for (int64_t b0 = 0; b0 < j->nb; b0 += NB_AVX2) {                  \
                int64_t nb = j->nb - b0;                                       \
                if (nb >= 3) tile(j, t, b0, 3);                                \
                else if (nb == 2) tile(j, t, b0, 2);                           \
                else tile(j, t, b0, 1);                                        \
            }                                                                  \
    }
DEFINE_TILES_AVX2(tiles_bf16_avx2, tile_bf16_avx2)
DEFINE_TILES_AVX2(tiles_f32_avx2, tile_f32_avx2)

#if LMS_AVX512BF16
/* ------------------------------------------------------------- AVX-512 (BF16) */

#define NB_512 8     /* batch rows per register chunk: 8 x 2 zmm accumulators */
#define GROUP_512 32 /* batch rows per k-blocked group (partial sums: 4 KiB on the stack) */
#define KBLOCK 64    /* k steps (bf16: pairs) per block: 8 KiB of weights */
#define LINE 64
#define STEP_BYTES (2 * LINE) /* weight bytes per k step of a tile, in both layouts */

/* Software prefetch of the weight stream, non-temporal so that weights read once
 * per call do not evict activations. A tile's single pass (pf == NULL) fetches
 * PREFETCH_BYTES ahead of w. When several chunks pass over one L1-resident k
 * block, each fetches its share of the next block, one line per k step, so DRAM
 * keeps streaming while the block is reused (-20% time at batch 16-32). */
T_512 static inline __attribute__((always_inline)) void
prefetch_weights(const void *w, const char *pf, int64_t step, const char *pf_end)
{
    if (!pf) {
        _mm_prefetch((const char *)w + PREFETCH_BYTES, _MM_HINT_NTA);
        _mm_prefetch((const char *)w + PREFETCH_BYTES + LINE, _MM_HINT_NTA);
    } else if (pf + step * LINE < pf_end) {
        _mm_prefetch(pf + step * LINE, _MM_HINT_NTA);
    }
}

/* Accumulators of one chunk: at nb <= 2 the k loop alternates two sets so that
 * dot-product latency never limits the weight stream. */
typedef struct { __m512 a[2][NB_512][2]; } acc512_t;

T_512 static inline __attribute__((always_inline)) void
acc512_begin(acc512_t *acc, const int nb, const int ku, int64_t k0, const float *partial)
{
    for (int b = 0; b < nb; b++) {
        for (int u = 0; u < ku; u++) acc->a[u][b][0] = acc->a[u][b][1] = _mm512_setzero_ps();
        if (k0 > 0) {
            acc->a[0][b][0] = _mm512_loadu_ps(partial + b * TILE);
            acc->a[0][b][1] = _mm512_loadu_ps(partial + b * TILE + 16);
        }
    }
}

/* Sums the ku sets; keeps them as partial sums (k1 < kend) or passes them plus
 * the bias (bv0, bv1) to `write` (row b, rows 0-15, rows 16-31) once the tile's
 * k range is complete. */
#define ACC512_END(acc, nb, ku, k1, kend, partial, write)                      \
    for (int b = 0; b < (nb); b++) {                                           \
        __m512 a0 = (acc).a[0][b][0], a1 = (acc).a[0][b][1];                   \
        if ((ku) == 2) {                                                       \
            a0 = _mm512_add_ps(a0, (acc).a[1][b][0]);                          \
            a1 = _mm512_add_ps(a1, (acc).a[1][b][1]);                          \
        }                                                                      \
        if ((k1) < (kend)) {                                                   \
            _mm512_storeu_ps((partial) + b * TILE, a0);                        \
            _mm512_storeu_ps((partial) + b * TILE + 16, a1);                   \
        } else {                                                               \
            write(b, _mm512_add_ps(a0, bv0), _mm512_add_ps(a1, bv1));          \
        }                                                                      \
    }

/* Batch rows b0..b0+nb-1 of tile t over k pairs [p0, p1), continuing from and
 * leaving partial sums in `partial` unless the range starts / ends the tile. */
T_512 static inline __attribute__((always_inline)) void
chunk_bf16_512(const job_t *j, int64_t t, int64_t b0, const int nb, int64_t p0, int64_t p1, float *partial,
               const char *pf, const char *pf_end)
{
    const int ku = nb <= 2 ? 2 : 1;
    const int64_t kp = (j->in + 1) / 2, kfull = j->in / 2;
    const uint16_t *wt = (const uint16_t *)j->w + t * kp * 2 * TILE;
    const uint16_t *x = (const uint16_t *)j->x + b0 * j->ldx;
    acc512_t acc;
    acc512_begin(&acc, nb, ku, p0, partial);
    const int64_t pfull = p1 < kfull ? p1 : kfull;
    int64_t p = p0;
    for (; p + ku <= pfull; p += ku)
        for (int u = 0; u < ku; u++) {
            const uint16_t *wp = wt + (p + u) * 2 * TILE;
            prefetch_weights(wp, pf, p + u - p0, pf_end);
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp);
            __m512bh w1 = (__m512bh)_mm512_loadu_si512(wp + 2 * 16);
            for (int b = 0; b < nb; b++) {
                int32_t xp;
                memcpy(&xp, x + b * j->ldx + 2 * (p + u), 4);
                __m512bh xv = (__m512bh)_mm512_set1_epi32(xp);
                acc.a[u][b][0] = _mm512_dpbf16_ps(acc.a[u][b][0], w0, xv);
                acc.a[u][b][1] = _mm512_dpbf16_ps(acc.a[u][b][1], w1, xv);
            }
        }
    for (; p < p1; p++) { /* a leftover pair (ku == 2), or the odd last column padded with 0 */
        const uint16_t *wp = wt + p * 2 * TILE;
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(wp + 2 * 16);
        for (int b = 0; b < nb; b++) {
            const uint16_t *xb = x + b * j->ldx + 2 * p;
            uint32_t xp = xb[0] | (p < kfull ? (uint32_t)xb[1] << 16 : 0u);
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int32_t)xp);
            acc.a[0][b][0] = _mm512_dpbf16_ps(acc.a[0][b][0], w0, xv);
            acc.a[0][b][1] = _mm512_dpbf16_ps(acc.a[0][b][1], w1, xv);
        }
    }
    const int n = tile_rows(j, t);
    const __mmask16 m0 = lo_mask(n), m1 = lo_mask(n - 16);
    uint16_t *y = (uint16_t *)j->y + b0 * j->ldy + t * TILE;
    __m512 bv0 = _mm512_setzero_ps(), bv1 = _mm512_setzero_ps();
    if (j->bias && p1 == kp) {
        const uint16_t *bias = (const uint16_t *)j->bias + t * TILE;
        bv0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m0, bias)), 16));
        bv1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m1, bias + 16)), 16));
    }
#define WRITE_BF16(b, a0, a1)                                                            \
    _mm256_mask_storeu_epi16(y + (b) * j->ldy, m0, (__m256i)_mm512_cvtneps_pbh(a0));    \
    _mm256_mask_storeu_epi16(y + (b) * j->ldy + 16, m1, (__m256i)_mm512_cvtneps_pbh(a1))
    ACC512_END(acc, nb, ku, p1, kp, partial, WRITE_BF16)
#undef WRITE_BF16
}

/* As chunk_bf16_512 over k [k0, k1) of an fp32 tile. */
T_512 static inline __attribute__((always_inline)) void
chunk_f32_512(const job_t *j, int64_t t, int64_t b0, const int nb, int64_t k0, int64_t k1, float *partial,
              const char *pf, const char *pf_end)
{
    const int ku = nb <= 2 ? 2 : 1;
    const float *wt = (const float *)j->w + t * j->in * TILE;
    const float *x = (const float *)j->x + b0 * j->ldx;
    acc512_t acc;
    acc512_begin(&acc, nb, ku, k0, partial);
    int64_t k = k0;
    for (; k + ku <= k1; k += ku)
        for (int u = 0; u < ku; u++) {
            const float *wk = wt + (k + u) * TILE;
            prefetch_weights(wk, pf, k + u - k0, pf_end);
            __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16);
            for (int b = 0; b < nb; b++) {
                __m512 xb = _mm512_set1_ps(x[b * j->ldx + k + u]);
                acc.a[u][b][0] = _mm512_fmadd_ps(w0, xb, acc.a[u][b][0]);
                acc.a[u][b][1] = _mm512_fmadd_ps(w1, xb, acc.a[u][b][1]);
            }
        }
    for (; k < k1; k++) {
        const float *wk = wt + k * TILE;
        __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16);
        for (int b = 0; b < nb; b++) {
            __m512 xb = _mm512_set1_ps(x[b * j->ldx + k]);
            acc.a[0][b][0] = _mm512_fmadd_ps(w0, xb, acc.a[0][b][0]);
            acc.a[0][b][1] = _mm512_fmadd_ps(w1, xb, acc.a[0][b][1]);
        }
    }
    const int n = tile_rows(j, t);
    const __mmask16 m0 = lo_mask(n), m1 = lo_mask(n - 16);
    float *y = (float *)j->y + b0 * j->ldy + t * TILE;
    __m512 bv0 = _mm512_setzero_ps(), bv1 = _mm512_setzero_ps();
    if (j->bias && k1 == j->in) {
        bv0 = _mm512_maskz_loadu_ps(m0, (const float *)j->bias + t * TILE);
        bv1 = _mm512_maskz_loadu_ps(m1, (const float *)j->bias + t * TILE + 16);
    }
#define WRITE_F32(b, a0, a1)                                 \
    _mm512_mask_storeu_ps(y + (b) * j->ldy, m0, a0);         \
    _mm512_mask_storeu_ps(y + (b) * j->ldy + 16, m1, a1)
    ACC512_END(acc, nb, ku, k1, j->in, partial, WRITE_F32)
#undef WRITE_F32
}

/* Up to NB_512 batch rows stream the tile once with all sums in registers.
 * Larger groups walk k in blocks and run every chunk of the group over a block
 * while it sits in L1 (see prefetch_weights). A literal nb per switch case lets
 * the compiler unroll the batch loop. A tile is kd steps of STEP_BYTES. */
#define DEFINE_TILES_512(name, chunk, kdim)                                                   \
    T_512 static void name(const job_t *j, int64_t t0, int64_t t1)                            \
    {                                                                                         \
        const int64_t kd = (kdim);                                                            \
        float partial[GROUP_512 * TILE];                                                      \
        for (int64_t t = t0; t < t1; t++)                                                     \
            for (int64_t g0 = 0; g0 < j->nb; g0 += GROUP_512) {                               \
                int64_t gn = j->nb - g0 < GROUP_512 ? j->nb - g0 : GROUP_512;                 \
                int64_t kb = gn <= NB_512 ? kd : KBLOCK;                                      \
                for (int64_t k0 = 0; k0 < kd; k0 += kb) {                                     \
                    int64_t k1 = k0 + kb < kd ? k0 + kb : kd;                                 \
                    const char *next = (const char *)j->w + (t * kd + k1) * STEP_BYTES;       \
                    for (int64_t c0 = g0; c0 < g0 + gn; c0 += NB_512) {                       \
                        float *part = partial + (c0 - g0) * TILE;                             \
                        const char *pf = NULL;                                                \
                        if (gn > NB_512) pf = next + (c0 - g0) / NB_512 * (k1 - k0) * LINE;   \
                        const char *pe = next + KBLOCK * STEP_BYTES;                          \
                        int64_t cn = g0 + gn - c0;                                            \
                        switch (cn < NB_512 ? cn : NB_512) {                                  \
                        case 1: chunk(j, t, c0, 1, k0, k1, part, pf, pe); break;              \
                        case 2: chunk(j, t, c0, 2, k0, k1, part, pf, pe); break;              \
                        case 3: chunk(j, t, c0, 3, k0, k1, part, pf, pe); break;              \
                        case 4: chunk(j, t, c0, 4, k0, k1, part, pf, pe); break;              \
                        case 5: chunk(j, t, c0, 5, k0, k1, part, pf, pe); break;              \
                        case 6: chunk(j, t, c0, 6, k0, k1, part, pf, pe); break;              \
                        case 7: chunk(j, t, c0, 7, k0, k1, part, pf, pe); break;              \
                        default: chunk(j, t, c0, 8, k0, k1, part, pf, pe); break;             \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
    }
DEFINE_TILES_512(tiles_bf16_512, chunk_bf16_512, (j->in + 1) / 2)
DEFINE_TILES_512(tiles_f32_512, chunk_f32_512, j->in)
#endif /* LMS_AVX512BF16 */
#endif /* LMS_X86 */

/* ----------------------------------------------------------------- dispatch */

static int detect_isa(void)
{
#if LMS_X86
    __builtin_cpu_init();
#if LMS_AVX512BF16
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16"))
        return ISA_AVX512BF16;
#endif
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
#endif
    return ISA_PORTABLE;
}

static int g_isa = -1;

/* Returns the best instruction set this CPU supports (0 portable, 1 AVX2+FMA, 2 AVX-512 BF16). */
LMS_API int lms_max_isa(void) { return detect_isa(); }

/* Selects the instruction set of every kernel in the library (clamped to what the CPU
 * supports; tests force lower ones). */
LMS_API int lms_set_isa(int isa)
{
    int best = detect_isa();
    g_isa = isa < 0 || isa > best ? best : isa;
    return g_isa;
}

int lms_isa(void) { return g_isa < 0 ? lms_set_isa(-1) : g_isa; }

typedef void (*omp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_fn)(void);
static omp_parallel_fn g_parallel;
static omp_int_fn g_thread_num, g_num_threads;

/* Hands in the OpenMP runtime's GOMP_parallel, omp_get_thread_num and omp_get_num_threads
 * (any NULL: run single-threaded). Set once, before the first kernel call. */
LMS_API void lms_set_omp(omp_parallel_fn parallel, omp_int_fn thread_num, omp_int_fn num_threads)
{
    int ok = parallel && thread_num && num_threads;
    g_parallel = ok ? parallel : NULL;
    g_thread_num = ok ? thread_num : NULL;
    g_num_threads = ok ? num_threads : NULL;
}

void lms_parallel(void (*fn)(void *), void *arg, int nthreads)
{
    if (g_parallel && nthreads > 1)
        g_parallel(fn, arg, (unsigned)nthreads, 0);
    else
        fn(arg);
}

int lms_thread_num(void) { return g_parallel ? g_thread_num() : 0; }
int lms_num_threads(void) { return g_parallel ? g_num_threads() : 1; }

static void parallel_body(void *arg)
{
    const job_t *j = (const job_t *)arg;
    int64_t id = lms_thread_num(), n = lms_num_threads();
    j->tiles(j, j->ntiles * id / n, j->ntiles * (id + 1) / n);
}

void lms_gemv(int bf16, const void *x, int64_t ldx, int64_t nb, int64_t in, const void *w, int64_t out,
              const void *bias, void *y, int64_t ldy, int nthreads)
{
    job_t j = {x, ldx, nb, in, w, out, y, ldy, (out + TILE - 1) / TILE, bias,
               bf16 ? tiles_bf16_portable : tiles_f32_portable};
#if LMS_X86
    const int isa = lms_isa();
    if (isa == ISA_AVX2) j.tiles = bf16 ? tiles_bf16_avx2 : tiles_f32_avx2;
#if LMS_AVX512BF16
    if (isa == ISA_AVX512BF16) j.tiles = bf16 ? tiles_bf16_512 : tiles_f32_512;
#endif
#endif
    int64_t bytes = j.ntiles * TILE * in * (bf16 ? 2 : 4);
    if (nthreads > j.ntiles) nthreads = (int)j.ntiles;
    if (bytes >= MIN_PARALLEL_BYTES)
        lms_parallel(parallel_body, &j, nthreads);
    else
        j.tiles(&j, 0, j.ntiles);
}

/* y[b, :out] = x[b, :in] @ W^T for b < nb; x, y bf16 with row strides ldx, ldy (elements);
 * w packed as [ceil(out/32)][ceil(in/2)][32][2]. */
LMS_API void lms_gemv_bf16(const uint16_t *x, int64_t ldx, int64_t nb, int64_t in, const uint16_t *w,
                           int64_t out, uint16_t *y, int64_t ldy, int nthreads)
{
    lms_gemv(1, x, ldx, nb, in, w, out, NULL, y, ldy, nthreads);
}

/* As lms_gemv_bf16 for fp32; w packed as [ceil(out/32)][in][32]. */
LMS_API void lms_gemv_f32(const float *x, int64_t ldx, int64_t nb, int64_t in, const float *w,
                          int64_t out, float *y, int64_t ldy, int nthreads)
{
    lms_gemv(0, x, ldx, nb, in, w, out, NULL, y, ldy, nthreads);
}
