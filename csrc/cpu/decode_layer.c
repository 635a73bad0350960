/*
 * decode_layer.c - one decoder layer of a decode step in one call.
 *
 * In a decode step every sequence brings one new token, so a layer is four
 * weight-streaming GEMVs (gemv.c) and ~40 tiny ops between them: norms, rotary,
 * the KV-cache write, paged attention, silu*up, residual adds. As torch ops
 * each of those costs 2-10 us of dispatch, about as long as the GEMVs take at
 * batch 1; here the whole layer is one call and the tiny ops cost what their
 * arithmetic costs.
 *
 * It computes exactly what DecoderLayer.forward (app/engine/models/decoder.py)
 * computes with the torch reference ops (app/engine/kernels/reference.py), for
 * n rows (one per sequence), and rounds to the model dtype wherever a torch op
 * hands back a tensor of that dtype: norms compute in fp32 and multiply the
 * weight after rounding, rotary rounds each product and sum, attention works in
 * fp32 and rounds its output once.
 *
 * Threads: the GEMVs and the attention (over (row, kv head, head range) items,
 * split by cost) run in torch's OpenMP pool through gemv.c; the elementwise
 * parts are too small to be worth a fork and run on the calling thread.
 * Instruction sets: AVX-512 (BF16) code for the attention and the elementwise
 * parts; below that level, C written for the compiler to vectorize, built for
 * AVX2+FMA and for the baseline (the GEMVs have their own paths).
 */
#include <math.h>
#include <stdlib.h>

#include "gemv.h"

#define MAX_HEAD_DIM 256 /* Gemma's; bounds the attention's stack state */
#define ATTN_MIN_PARALLEL (64 * 1024) /* attention MACs below which one thread does it all */
#define ATTN_BLOCK 64 /* keys per online-softmax block: its K and V rows stay in L1 */
#define ITEM_HEADS 8  /* most query heads per attention work item (bounds its stack state) */
/* Keys ahead of the one being scored whose K and V rows are prefetched: 16-32 measured best at
 * batch 16 (-20% time); longer leads issue bursts of prefetches that stall the loads in flight. */
#define KV_AHEAD 32

/* Everything about a layer that stays fixed between steps (built once at load). */
typedef struct {
    int64_t bf16; /* 1: bf16 model, 0: fp32 */
    int64_t hidden, num_heads, num_kv_heads, head_dim, inter;
    int64_t num_blocks, block_size; /* KV cache: [num_blocks, block_size, num_kv_heads, head_dim] */
    int64_t window;                 /* sliding window in tokens, 0: none */
    float eps, scale;
    const void *input_norm, *post_norm; /* [hidden] */
    const void *q_norm, *k_norm;        /* [head_dim], or both NULL */
    /* weights packed by gemv.c's layout; biases [out] or NULL */
    const void *w_qkv, *b_qkv, *w_o, *b_o, *w_gate_up, *b_gate_up, *w_down, *b_down;
    void *k_cache, *v_cache;
} lms_layer_t;

/* One decode step, shared by all layers. */
typedef struct {
    int64_t n, bf16, half_dim, nthreads;
    const void *cos, *sin;        /* [n, half_dim], model dtype */
    const int64_t *slots;         /* [n] cache slot (block * block_size + offset) of each new token */
    const int64_t *block_tables;  /* [n, table_width] with row stride table_stride */
    int64_t table_stride, table_width;
    const int64_t *context_lens;  /* [n] tokens to attend to, the new one included */
} lms_step_t;

enum {
    LMS_OK = 0,
    LMS_EBAD_LAYER = -1,
    LMS_EBAD_STEP = -2,
    LMS_EBAD_SLOT = -3,
    LMS_EBAD_CONTEXT = -4,
    LMS_EBAD_BLOCK = -5,
    LMS_ENOMEM = -6,
};

/* ------------------------------------------------------- portable rows
 * Written for compilers to vectorize (no loop-carried float sums: lane-parallel partial sums;
 * exp without libm), with the dtype a constant after inlining; built twice below, for the
 * baseline instruction set and for AVX2+FMA. */

#define LANES 16 /* partial sums per reduction */

static inline float ld(const void *p, int64_t i, int bf16)
{
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void st(void *p, int64_t i, float v, int bf16)
{
    if (bf16) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* v rounded to the model dtype, as a torch op returning that dtype does. */
static inline float rnd(float v, int bf16) { return bf16 ? bf16_to_f32(f32_to_bf16(v)) : v; }

/* e^x to ~2 ulp as exp16 computes it; inputs below -87 give e^-87 (~1e-38) instead of
 * denormals or 0, which no sum here can tell apart. */
static inline float exp_poly(float x)
{
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float round = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    const float n = (x * 1.44269504f + round) - round;
    const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* sum of a[i] * b[i] for i < n, in LANES partial sums. */
static inline __attribute__((always_inline)) float dot_generic(const void *a, const void *b, int64_t n, const int bf16)
{
    float part[LANES] = {0}, dot = 0.0f;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) part[l] += ld(a, i + l, bf16) * ld(b, i + l, bf16);
    for (; i < n; i++) dot += ld(a, i, bf16) * ld(b, i, bf16);
    for (int l = 0; l < LANES; l++) dot += part[l];
    return dot;
}

/* y = rms_norm(r) * w with r = x + res (stored to res_out) or r = x (copied to res_out
 * unless NULL). In place (y == x, or res_out == res) is fine. */
static inline __attribute__((always_inline)) void
norm_row_generic(const void *x, const void *res, void *res_out, const void *w, void *y, int64_t dim, float eps,
                 const int bf16)
{
    if (res)
        for (int64_t i = 0; i < dim; i++) st(res_out, i, rnd(ld(x, i, bf16) + ld(res, i, bf16), bf16), bf16);
    else if (res_out)
        memcpy(res_out, x, (size_t)(dim * (bf16 ? 2 : 4)));
    const void *src = res_out ? res_out : x;
    const float inv = 1.0f / sqrtf(dot_generic(src, src, dim, bf16) / (float)dim + eps);
    for (int64_t i = 0; i < dim; i++) st(y, i, ld(w, i, bf16) * rnd(ld(src, i, bf16) * inv, bf16), bf16);
}

/* Rotary ("rotate_half" layout) of `heads` heads of x in place. */
static inline __attribute__((always_inline)) void
rope_row_generic(void *x, int64_t heads, int64_t dim, const void *cos, const void *sin, const int bf16)
{
    const int64_t half = dim / 2;
    for (int64_t h = 0; h < heads; h++) {
        char *xh = (char *)x + h * dim * (bf16 ? 2 : 4);
        for (int64_t i = 0; i < half; i++) {
            float x1 = ld(xh, i, bf16), x2 = ld(xh, i + half, bf16), c = ld(cos, i, bf16), s = ld(sin, i, bf16);
            st(xh, i, rnd(x1 * c, bf16) - rnd(x2 * s, bf16), bf16);
            st(xh, i + half, rnd(x2 * c, bf16) + rnd(x1 * s, bf16), bf16);
        }
    }
}

/* a = silu(gate) * up, gate_up = [gate | up] of `inter` each. */
static inline __attribute__((always_inline)) void
silu_mul_row_generic(const void *gate_up, void *a, int64_t inter, const int bf16)
{
    for (int64_t i = 0; i < inter; i++) {
        float g = ld(gate_up, i, bf16);
        st(a, i, rnd(g / (1.0f + exp_poly(-g)), bf16) * ld(gate_up, inter + i, bf16), bf16);
    }
}

#if LMS_AVX512BF16
/* ------------------------------------------------------------- AVX-512 rows */

T_512 static inline __m512 ld16(const void *p, int64_t i, __mmask16 m, int bf16)
{
    if (bf16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i)), 16));
    return _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

T_512 static inline void st16(void *p, int64_t i, __m512 v, __mmask16 m, int bf16)
{
    if (bf16) _mm256_mask_storeu_epi16((uint16_t *)p + i, m, (__m256i)_mm512_cvtneps_pbh(v));
    else _mm512_mask_storeu_ps((float *)p + i, m, v);
}

T_512 static inline __m512 rnd16(__m512 v, int bf16)
{
    if (!bf16) return v;
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

/* e^x in fp32 to ~1 ulp: 2^n * e^r with |r| <= ln2/2 and a degree-7 Taylor polynomial. */
T_512 static inline __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x); /* ln2 split hi + lo */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

T_512 static void norm_row_512(const void *x, const void *res, void *res_out, const void *w, void *y, int64_t dim,
                               float eps, int bf16)
{
    __m512 ss = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
        __mmask16 m = lo_mask(dim - i);
        __m512 r = ld16(x, i, m, bf16);
        if (res) r = rnd16(_mm512_add_ps(r, ld16(res, i, m, bf16)), bf16);
        if (res_out) st16(res_out, i, r, m, bf16);
        ss = _mm512_fmadd_ps(r, r, ss);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)dim + eps));
    const void *src = res_out ? res_out : x;
    for (int64_t i = 0; i < dim; i += 16) {
        __mmask16 m = lo_mask(dim - i);
        __m512 v = rnd16(_mm512_mul_ps(ld16(src, i, m, bf16), inv), bf16);
        st16(y, i, _mm512_mul_ps(ld16(w, i, m, bf16), v), m, bf16);
    }
}

T_512 static void rope_row_512(void *x, int64_t heads, int64_t dim, const void *cos, const void *sin, int bf16)
{
    const int64_t half = dim / 2;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < half; i += 16) {
            __mmask16 m = lo_mask(half - i);
            int64_t a = h * dim + i, b = a + half;
            __m512 x1 = ld16(x, a, m, bf16), x2 = ld16(x, b, m, bf16);
            __m512 c = ld16(cos, i, m, bf16), s = ld16(sin, i, m, bf16);
            st16(x, a, _mm512_sub_ps(rnd16(_mm512_mul_ps(x1, c), bf16), rnd16(_mm512_mul_ps(x2, s), bf16)), m, bf16);
            st16(x, b, _mm512_add_ps(rnd16(_mm512_mul_ps(x2, c), bf16), rnd16(_mm512_mul_ps(x1, s), bf16)), m, bf16);
        }
}

T_512 static void silu_mul_row_512(const void *gate_up, void *a, int64_t inter, int bf16)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < inter; i += 16) {
        __mmask16 m = lo_mask(inter - i);
        __m512 g = ld16(gate_up, i, m, bf16);
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        st16(a, i, _mm512_mul_ps(rnd16(s, bf16), ld16(gate_up, inter + i, m, bf16)), m, bf16);
    }
}
#endif /* LMS_AVX512BF16 */

/* ---------------------------------------------------------------- attention */

/* Walks the cache slots of a sequence's positions in order, one table lookup per block. */
typedef struct {
    const int64_t *table;
    int64_t block_size, block, offset;
} slot_iter_t;

static inline slot_iter_t slot_iter(const int64_t *table, int64_t block_size, int64_t pos)
{
    slot_iter_t it = {table, block_size, pos / block_size, pos % block_size};
    return it;
}

static inline int64_t next_slot(slot_iter_t *it)
{
    int64_t slot = it->table[it->block] * it->block_size + it->offset;
    if (++it->offset == it->block_size) {
        it->offset = 0;
        it->block++;
    }
    return slot;
}

/* First attended position of a sequence with `len` tokens. */
static inline int64_t window_start(const lms_layer_t *L, int64_t len)
{
    return L->window > 0 && len > L->window ? len - L->window : 0;
}

typedef struct {
    const lms_layer_t *L;
    const lms_step_t *S;
    const void *qkv; /* [n, (H + 2 KVH) D]: q, k, v of this step's tokens */
    void *out;       /* [n, H D] */
    int64_t parts, items, total;
} attn_job_t;

/* Where one work item reads: query heads [h0, h1) of kv head g's group for one row. */
typedef struct {
    const char *q, *k_base, *v_base; /* first query head; kv head g's K and V in slot 0 */
    char *out;                       /* output of the first query head */
    const int64_t *table;
    int64_t lo, cnt, nh, slot_bytes; /* first attended position, how many, heads, bytes per cache slot */
} attn_item_t;

static attn_item_t item_view(const attn_job_t *a, int64_t row, int64_t g, int64_t h0, int64_t h1)
{
    const lms_layer_t *L = a->L;
    const int64_t D = L->head_dim, kvs = L->num_kv_heads * D, es = L->bf16 ? 2 : 4;
    const int64_t len = a->S->context_lens[row], lo = window_start(L, len);
    attn_item_t it = {
        (const char *)a->qkv + (row * (L->num_heads * D + 2 * kvs) + h0 * D) * es,
        (const char *)L->k_cache + g * D * es,
        (const char *)L->v_cache + g * D * es,
        (char *)a->out + (row * L->num_heads + h0) * D * es,
        a->S->block_tables + row * a->S->table_stride,
        lo, len - lo, h1 - h0, kvs * es,
    };
    return it;
}

/* Attention of an item's heads in blocks of ATTN_BLOCK keys with an online softmax (running
 * max and sum, accumulators rescaled when the max grows); each V row is converted once for
 * all the item's heads. */
static inline __attribute__((always_inline)) void
attend_generic(const attn_job_t *a, const attn_item_t *t, const int bf16)
{
    const lms_layer_t *L = a->L;
    const int64_t D = L->head_dim, es = bf16 ? 2 : 4, nh = t->nh;
    float top[ITEM_HEADS], sum[ITEM_HEADS], acc[ITEM_HEADS][MAX_HEAD_DIM], s[ITEM_HEADS][ATTN_BLOCK], v[MAX_HEAD_DIM];
    int64_t off[ATTN_BLOCK];
    for (int64_t h = 0; h < nh; h++) {
        top[h] = -INFINITY;
        sum[h] = 0.0f;
        for (int64_t d = 0; d < D; d++) acc[h][d] = 0.0f;
    }
    slot_iter_t it = slot_iter(t->table, L->block_size, t->lo);
    for (int64_t p0 = 0; p0 < t->cnt; p0 += ATTN_BLOCK) {
        const int64_t m = t->cnt - p0 < ATTN_BLOCK ? t->cnt - p0 : ATTN_BLOCK;
        for (int64_t p = 0; p < m; p++) off[p] = next_slot(&it) * t->slot_bytes;
        for (int64_t h = 0; h < nh; h++) {
            float new_top = top[h], block_sum = 0.0f;
            for (int64_t p = 0; p < m; p++) {
                s[h][p] = dot_generic(t->q + h * D * es, t->k_base + off[p], D, bf16) * L->scale;
                new_top = s[h][p] > new_top ? s[h][p] : new_top;
            }
            for (int64_t p = 0; p < m; p++) s[h][p] = exp_poly(s[h][p] - new_top);
            for (int64_t p = 0; p < m; p++) block_sum += s[h][p];
            const float alpha = exp_poly(top[h] - new_top);
            sum[h] = sum[h] * alpha + block_sum;
            top[h] = new_top;
            for (int64_t d = 0; d < D; d++) acc[h][d] *= alpha;
        }
        for (int64_t p = 0; p < m; p++) {
            for (int64_t d = 0; d < D; d++) v[d] = ld(t->v_base + off[p], d, bf16);
            for (int64_t h = 0; h < nh; h++)
                for (int64_t d = 0; d < D; d++) acc[h][d] += s[h][p] * v[d];
        }
    }
    for (int64_t h = 0; h < nh; h++)
        for (int64_t d = 0; d < D; d++) st(t->out + h * D * es, d, acc[h][d] / sum[h], bf16);
}

#if LMS_AVX512BF16
/* Lane i of the result = sum of the lanes of v[i]. */
T_512 static inline __m512 hsum16x16(const __m512 v[16])
{
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) /* per 128-bit lane: lane sums of v[4i .. 4i+3] */
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Lane-wise partial sums of q . k over D elements (bf16 pairs through vdpbf16ps). */
T_512 static inline __attribute__((always_inline)) __m512
dot_partial_512(const void *q, const void *k, const int64_t D, const int bf16)
{
    __m512 acc = _mm512_setzero_ps();
    if (bf16) {
        for (int64_t d = 0; d < D; d += 32) {
            __mmask32 m = D - d >= 32 ? 0xffffffffu : (__mmask32)((1u << (D - d)) - 1);
            __m512i qv = _mm512_maskz_loadu_epi16(m, (const uint16_t *)q + d);
            __m512i kv = _mm512_maskz_loadu_epi16(m, (const uint16_t *)k + d);
            acc = _mm512_dpbf16_ps(acc, (__m512bh)kv, (__m512bh)qv);
        }
    } else {
        for (int64_t d = 0; d < D; d += 16) {
            __mmask16 m = lo_mask(D - d);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, (const float *)q + d),
                                  _mm512_maskz_loadu_ps(m, (const float *)k + d), acc);
        }
    }
    return acc;
}

/* Online-softmax step of one head over a block's scores s[0..m): s becomes exp(s - new max);
 * returns the factor that rescales the earlier sum and accumulators. */
T_512 static float softmax_block_512(float *s, int64_t m, float *top, float *sum)
{
    __m512 mx = _mm512_set1_ps(*top), total = _mm512_setzero_ps();
    for (int64_t p = 0; p < m; p += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, lo_mask(m - p), s + p));
    const float new_top = _mm512_reduce_max_ps(mx), alpha = expf(*top - new_top);
    const __m512 shift = _mm512_set1_ps(new_top);
    for (int64_t p = 0; p < m; p += 16) {
        __mmask16 mk = lo_mask(m - p);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + p), shift));
        _mm512_mask_storeu_ps(s + p, mk, e);
        total = _mm512_mask_add_ps(total, mk, total, e);
    }
    *sum = *sum * alpha + _mm512_reduce_add_ps(total);
    *top = new_top;
    return alpha;
}

/* acc[h] = alpha[h] * acc[h] + sum_p e[h * ATTN_BLOCK + p] v_p for nh heads over a block's
 * V rows: each V row is converted once for all of them, and with nh and D constant after
 * inlining their accumulators stay in registers for the block. */
T_512 static inline __attribute__((always_inline)) void
pv_block_512(const int nh, const int64_t D, const int bf16, const char *v_base, const int64_t *offsets, int64_t m,
             const float *e, const float *alpha, __m512 (*acc)[MAX_HEAD_DIM / 16])
{
    __m512 r[4][MAX_HEAD_DIM / 16], v[MAX_HEAD_DIM / 16];
    for (int h = 0; h < nh; h++)
        for (int64_t c = 0; c < D; c += 16) r[h][c / 16] = _mm512_mul_ps(acc[h][c / 16], _mm512_set1_ps(alpha[h]));
    for (int64_t p = 0; p < m; p++) {
        for (int64_t c = 0; c < D; c += 16) v[c / 16] = ld16(v_base + offsets[p], c, lo_mask(D - c), bf16);
        for (int h = 0; h < nh; h++) {
            const __m512 w = _mm512_set1_ps(e[h * ATTN_BLOCK + p]);
            for (int64_t c = 0; c < D; c += 16) r[h][c / 16] = _mm512_fmadd_ps(w, v[c / 16], r[h][c / 16]);
        }
    }
    for (int h = 0; h < nh; h++)
        for (int64_t c = 0; c < D; c += 16) acc[h][c / 16] = r[h][c / 16];
}

/* Prefetches the K and V rows of the next m positions of `ahead` (while some remain). */
T_512 static inline void prefetch_kv_512(slot_iter_t *ahead, int64_t *left, int64_t m, int64_t slot_bytes,
                                         const char *k_base, const char *v_base, int64_t row_bytes)
{
    for (; m > 0 && *left > 0; m--, --*left) {
        const int64_t off = next_slot(ahead) * slot_bytes;
        for (int64_t b = 0; b < row_bytes; b += 64) {
            _mm_prefetch(k_base + off + b, _MM_HINT_T0);
            _mm_prefetch(v_base + off + b, _MM_HINT_T0);
        }
    }
}

/* As attend_portable, with all the item's heads together per block of keys, so each K and V
 * row is read once (prefetched KV_AHEAD keys ahead); D and bf16 are constants after inlining
 * for the common head sizes. */
T_512 static inline __attribute__((always_inline)) void
attend_512_body(const attn_job_t *a, const attn_item_t *t, const int64_t D, const int bf16)
{
    const int64_t es = bf16 ? 2 : 4, nh = t->nh, cnt = t->cnt, slot_bytes = t->slot_bytes;
    const char *q = t->q, *k_base = t->k_base, *v_base = t->v_base;
    const int per_pass = D == 64 ? 4 : D == 128 ? 2 : 1; /* heads whose accumulators fit registers */
    const __m512 scale = _mm512_set1_ps(a->L->scale);
    float s[ITEM_HEADS * ATTN_BLOCK], top[ITEM_HEADS], sum[ITEM_HEADS];
    __m512 acc[ITEM_HEADS][MAX_HEAD_DIM / 16];
    int64_t off[ATTN_BLOCK];
    for (int64_t h = 0; h < nh; h++) {
        top[h] = -INFINITY;
        sum[h] = 0.0f;
        for (int64_t c = 0; c < D; c += 16) acc[h][c / 16] = _mm512_setzero_ps();
    }
    slot_iter_t it = slot_iter(t->table, a->L->block_size, t->lo), ahead = it;
    int64_t left = cnt;
    prefetch_kv_512(&ahead, &left, KV_AHEAD, slot_bytes, k_base, v_base, D * es);
    for (int64_t p0 = 0; p0 < cnt; p0 += ATTN_BLOCK) {
        const int64_t m = cnt - p0 < ATTN_BLOCK ? cnt - p0 : ATTN_BLOCK;
        for (int64_t p = 0; p < m; p++) off[p] = next_slot(&it) * slot_bytes;

        /* scores = q . k * scale, 16 keys at a time: each key's lane-wise partial sums, then one transposing sum */
        for (int64_t p = 0; p < m; p += 16) {
            const int64_t k16 = m - p < 16 ? m - p : 16;
            prefetch_kv_512(&ahead, &left, k16, slot_bytes, k_base, v_base, D * es);
            for (int64_t h = 0; h < nh; h++) {
                __m512 part[16];
#pragma GCC unroll 16
                for (int64_t j = 0; j < 16; j++)
                    part[j] = j < k16 ? dot_partial_512(q + h * D * es, k_base + off[p + j], D, bf16)
                                      : _mm512_setzero_ps();
                _mm512_mask_storeu_ps(s + h * ATTN_BLOCK + p, lo_mask(k16), _mm512_mul_ps(hsum16x16(part), scale));
            }
        }

        for (int64_t h = 0; h < nh; h += per_pass) {
            const int k = nh - h < per_pass ? (int)(nh - h) : per_pass;
            float alpha[4];
            for (int j = 0; j < k; j++) alpha[j] = softmax_block_512(s + (h + j) * ATTN_BLOCK, m, top + h + j, sum + h + j);
            const float *e = s + h * ATTN_BLOCK;
            switch (k) {
            case 4: pv_block_512(4, D, bf16, v_base, off, m, e, alpha, acc + h); break;
            case 3: pv_block_512(3, D, bf16, v_base, off, m, e, alpha, acc + h); break;
            case 2: pv_block_512(2, D, bf16, v_base, off, m, e, alpha, acc + h); break;
            default: pv_block_512(1, D, bf16, v_base, off, m, e, alpha, acc + h); break;
            }
        }
    }
    for (int64_t h = 0; h < nh; h++)
        for (int64_t c = 0; c < D; c += 16)
            st16(t->out, h * D + c, _mm512_mul_ps(acc[h][c / 16], _mm512_set1_ps(1.0f / sum[h])), lo_mask(D - c), bf16);
}

T_512 static void attend_512(const attn_job_t *a, const attn_item_t *t)
{
    const int64_t D = a->L->head_dim;
    if (a->L->bf16) {
        if (D == 64) attend_512_body(a, t, 64, 1);
        else if (D == 128) attend_512_body(a, t, 128, 1);
        else attend_512_body(a, t, D, 1);
    } else {
        if (D == 64) attend_512_body(a, t, 64, 0);
        else if (D == 128) attend_512_body(a, t, 128, 0);
        else attend_512_body(a, t, D, 0);
    }
}
#endif /* LMS_AVX512BF16 */

/* ------------------------------------------------------- dispatch */

/* The generic rows and attention, built for one instruction set, dtype fixed per call. */
#define DEFINE_GENERIC(suffix, attr)                                                                           \
    attr static void norm_row_##suffix(const void *x, const void *res, void *res_out, const void *w, void *y,  \
                                       int64_t dim, float eps, int bf16)                                       \
    {                                                                                                          \
        if (bf16) norm_row_generic(x, res, res_out, w, y, dim, eps, 1);                                        \
        else norm_row_generic(x, res, res_out, w, y, dim, eps, 0);                                             \
    }                                                                                                          \
    attr static void rope_row_##suffix(void *x, int64_t heads, int64_t dim, const void *cos, const void *sin, \
                                       int bf16)                                                               \
    {                                                                                                          \
        if (bf16) rope_row_generic(x, heads, dim, cos, sin, 1);                                                \
        else rope_row_generic(x, heads, dim, cos, sin, 0);                                                     \
    }                                                                                                          \
    attr static void silu_mul_row_##suffix(const void *gate_up, void *a, int64_t inter, int bf16)             \
    {                                                                                                          \
        if (bf16) silu_mul_row_generic(gate_up, a, inter, 1);                                                  \
        else silu_mul_row_generic(gate_up, a, inter, 0);                                                       \
    }                                                                                                          \
    attr static void attend_##suffix(const attn_job_t *a, const attn_item_t *t)                                \
    {                                                                                                          \
        if (a->L->bf16) attend_generic(a, t, 1);                                                               \
        else attend_generic(a, t, 0);                                                                          \
    }
DEFINE_GENERIC(portable, )
#if LMS_X86
DEFINE_GENERIC(avx2, T_AVX2)
#endif

#if LMS_AVX512BF16
#define PICK(isa, name, args)                                                                                  \
    if ((isa) == ISA_AVX512BF16) name##_512 args;                                                              \
    else if ((isa) == ISA_AVX2) name##_avx2 args;                                                              \
    else name##_portable args
#elif LMS_X86
#define PICK(isa, name, args)                                                                                  \
    if ((isa) == ISA_AVX2) name##_avx2 args;                                                                   \
    else name##_portable args
#else
#define PICK(isa, name, args) name##_portable args
#endif

static void norm_row(const void *x, const void *res, void *res_out, const void *w, void *y, int64_t dim, float eps,
                     int bf16)
{
    PICK(lms_isa(), norm_row, (x, res, res_out, w, y, dim, eps, bf16));
}

static void rope_row(void *x, int64_t heads, int64_t dim, const void *cos, const void *sin, int bf16)
{
    PICK(lms_isa(), rope_row, (x, heads, dim, cos, sin, bf16));
}

static void silu_mul_row(const void *gate_up, void *a, int64_t inter, int bf16)
{
    PICK(lms_isa(), silu_mul_row, (gate_up, a, inter, bf16));
}

static void attend(const attn_job_t *a, const attn_item_t *t) { PICK(lms_isa(), attend, (a, t)); }

/* Work item `it` -> (row, kv head, query heads [h0, h1)); returns its cost in key-head pairs. */
static int64_t locate_item(const attn_job_t *a, int64_t it, int64_t *row, int64_t *g, int64_t *h0, int64_t *h1)
{
    const int64_t group = a->L->num_heads / a->L->num_kv_heads, per_row = a->L->num_kv_heads * a->parts;
    const int64_t part = it % a->parts;
    *row = it / per_row;
    *g = it % per_row / a->parts;
    *h0 = *g * group + part * group / a->parts;
    *h1 = *g * group + (part + 1) * group / a->parts;
    int64_t len = a->S->context_lens[*row];
    return (len - window_start(a->L, len)) * (*h1 - *h0);
}

/* Each thread takes the items whose cost midpoint falls in its equal share of the total. */
static void attn_body(void *arg)
{
    const attn_job_t *a = (const attn_job_t *)arg;
    const int64_t id = lms_thread_num(), nt = lms_num_threads();
    const int64_t lo = a->total * id / nt, hi = a->total * (id + 1) / nt;
    int64_t done = 0, row, g, h0, h1;
    for (int64_t it = 0; it < a->items; it++) {
        int64_t cost = locate_item(a, it, &row, &g, &h0, &h1), mid2 = 2 * done + cost;
        done += cost;
        if (mid2 < 2 * lo || mid2 >= 2 * hi) continue;
        const attn_item_t item = item_view(a, row, g, h0, h1);
        attend(a, &item);
    }
}

/* ------------------------------------------------------------------- layer */

static int check_layer(const lms_layer_t *L)
{
    if (!L || (L->bf16 != 0 && L->bf16 != 1) || L->hidden < 1 || L->num_heads < 1 || L->num_kv_heads < 1 ||
        L->num_heads % L->num_kv_heads || L->head_dim < 2 || L->head_dim % 2 || L->head_dim > MAX_HEAD_DIM ||
        L->inter < 1 || L->num_blocks < 1 || L->block_size < 1 || L->window < 0 || !(L->eps >= 0.0f))
        return LMS_EBAD_LAYER;
    if (!L->input_norm || !L->post_norm || !L->w_qkv || !L->w_o || !L->w_gate_up || !L->w_down || !L->k_cache ||
        !L->v_cache || !L->q_norm != !L->k_norm)
        return LMS_EBAD_LAYER;
    return LMS_OK;
}

/* Checks the step against the layer and the cache. */
static int check_step(const lms_layer_t *L, const lms_step_t *S)
{
    if (!S || S->n < 1 || S->bf16 != L->bf16 || 2 * S->half_dim != L->head_dim || !S->cos || !S->sin || !S->slots ||
        !S->block_tables || !S->context_lens || S->table_width < 1 || S->table_stride < S->table_width)
        return LMS_EBAD_STEP;
    const int64_t capacity = L->num_blocks * L->block_size;
    for (int64_t i = 0; i < S->n; i++) {
        const int64_t len = S->context_lens[i], *table = S->block_tables + i * S->table_stride;
        if (S->slots[i] < 0 || S->slots[i] >= capacity) return LMS_EBAD_SLOT;
        if (len < 1 || len > S->table_width * L->block_size) return LMS_EBAD_CONTEXT;
        const int64_t lo = window_start(L, len);
        for (int64_t b = lo / L->block_size; b <= (len - 1) / L->block_size; b++)
            if (table[b] < 0 || table[b] >= L->num_blocks) return LMS_EBAD_BLOCK;
    }
    return LMS_OK;
}

/* The calling thread's scratch memory, grown as needed and kept for the next call. */
static void *scratch(size_t bytes)
{
    static _Thread_local void *buf;
    static _Thread_local size_t size;
    if (bytes > size) {
        free(buf);
        size = 0;
        buf = malloc(bytes);
        if (!buf) return NULL;
        size = bytes;
    }
    return buf;
}

static size_t round_up(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* One decoder layer for a decode step of S->n rows:
 *   residual_out = x (+ residual); h = rms_norm(residual_out)
 *   q, k, v = h @ Wqkv^T (+ b); q/k norm; rotary; k, v -> cache; attention; o = . @ Wo^T (+ b)
 *   residual_out += o; h = rms_norm(residual_out); out = (silu(gate) * up)(h) @ Wdown^T (+ b)
 * x, residual (NULL in the first layer), out, residual_out: [n, hidden] of the model dtype.
 * Returns LMS_OK or a negative LMS_E* code, having changed nothing, when an argument is bad. */
LMS_API int lms_decode_layer(const lms_layer_t *L, const lms_step_t *S, const void *x, const void *residual,
                             void *out, void *residual_out)
{
    int rc = check_layer(L);
    if (rc == LMS_OK) rc = check_step(L, S);
    if (rc != LMS_OK) return rc;
    if (!x || !out || !residual_out) return LMS_EBAD_STEP;

    const int bf16 = (int)L->bf16, nthreads = S->nthreads > 1 ? (int)S->nthreads : 1;
    const int64_t n = S->n, es = bf16 ? 2 : 4, hidden = L->hidden, D = L->head_dim;
    const int64_t H = L->num_heads, KVH = L->num_kv_heads, group = H / KVH, inter = L->inter;
    const int64_t q_size = H * D, kv_size = KVH * D, qkv_size = q_size + 2 * kv_size;

    const size_t h_bytes = round_up((size_t)(n * hidden * es)), qkv_bytes = round_up((size_t)(n * qkv_size * es));
    const size_t attn_bytes = round_up((size_t)(n * q_size * es)), gu_bytes = round_up((size_t)(n * 2 * inter * es));
    const size_t act_bytes = round_up((size_t)(n * inter * es));
    char *ws = (char *)scratch(h_bytes * 2 + qkv_bytes + attn_bytes + gu_bytes + act_bytes);
    if (!ws) return LMS_ENOMEM;
    char *h = ws, *o = h + h_bytes, *qkv = o + h_bytes, *attn = qkv + qkv_bytes, *gu = attn + attn_bytes;
    char *act = gu + gu_bytes;
#define ROW(p, i, width) ((p) + (i) * (width) * es)

    for (int64_t i = 0; i < n; i++)
        norm_row(ROW((const char *)x, i, hidden), residual ? ROW((const char *)residual, i, hidden) : NULL,
                 ROW((char *)residual_out, i, hidden), L->input_norm, ROW(h, i, hidden), hidden, L->eps, bf16);

    lms_gemv(bf16, h, hidden, n, hidden, L->w_qkv, qkv_size, L->b_qkv, qkv, qkv_size, nthreads);

    for (int64_t i = 0; i < n; i++) {
        char *q = ROW(qkv, i, qkv_size), *k = q + q_size * es, *v = k + kv_size * es;
        if (L->q_norm) {
            for (int64_t hd = 0; hd < H; hd++) norm_row(q + hd * D * es, NULL, NULL, L->q_norm, q + hd * D * es, D, L->eps, bf16);
            for (int64_t hd = 0; hd < KVH; hd++) norm_row(k + hd * D * es, NULL, NULL, L->k_norm, k + hd * D * es, D, L->eps, bf16);
        }
        const void *cos = ROW((const char *)S->cos, i, S->half_dim), *sin = ROW((const char *)S->sin, i, S->half_dim);
        rope_row(q, H, D, cos, sin, bf16);
        rope_row(k, KVH, D, cos, sin, bf16);
        memcpy((char *)L->k_cache + S->slots[i] * kv_size * es, k, (size_t)(kv_size * es));
        memcpy((char *)L->v_cache + S->slots[i] * kv_size * es, v, (size_t)(kv_size * es));
    }

    /* Items of at most ITEM_HEADS heads, and enough of them to keep every thread busy: split
     * groups into head ranges when rows x kv heads are few. */
    attn_job_t job = {L, S, qkv, attn, (group + ITEM_HEADS - 1) / ITEM_HEADS, 0, 0};
    while (job.parts < group && n * KVH * job.parts < 2 * nthreads) job.parts++;
    job.items = n * KVH * job.parts;
    for (int64_t i = 0; i < n; i++) job.total += (S->context_lens[i] - window_start(L, S->context_lens[i])) * H;
    lms_parallel(attn_body, &job, job.total * D >= ATTN_MIN_PARALLEL ? nthreads : 1);

    lms_gemv(bf16, attn, q_size, n, q_size, L->w_o, hidden, L->b_o, o, hidden, nthreads);

    for (int64_t i = 0; i < n; i++)
        norm_row(ROW(o, i, hidden), ROW((char *)residual_out, i, hidden), ROW((char *)residual_out, i, hidden),
                 L->post_norm, ROW(h, i, hidden), hidden, L->eps, bf16);

    lms_gemv(bf16, h, hidden, n, hidden, L->w_gate_up, 2 * inter, L->b_gate_up, gu, 2 * inter, nthreads);
    for (int64_t i = 0; i < n; i++) silu_mul_row(ROW(gu, i, 2 * inter), ROW(act, i, inter), inter, bf16);
    lms_gemv(bf16, act, inter, n, inter, L->w_down, hidden, L->b_down, out, hidden, nthreads);
#undef ROW
    return LMS_OK;
}
