"""Triton kernels against the torch reference ops (app/engine/kernels/reference.py).

Without a CUDA device the kernels run under Triton's interpreter on CPU tensors (slow: small
shapes); with one, the same tests run on the GPU, plus the larger @pytest.mark.gpu shapes.
Errors are norm-wise, ||out - ref|| / ||ref||, on random inputs that are never zero.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere below

if sys.platform != "linux":  # the test extra installs Triton on Linux only; CI is Linux
    pytest.skip("Triton is installed on Linux only", allow_module_level=True)

from app.engine.attention_metadata import AttentionMetadata  # noqa: E402
from app.engine.kernels import reference  # noqa: E402
from app.engine.kernels import triton as tk  # noqa: E402

assert tk.available()  # a CUDA device, or the interpreter switched on above

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-4}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def nonzero(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Random values with |v| >= 0.1 (times scale), so no term silently drops out."""
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return ((t + torch.where(t >= 0, 0.1, -0.1)) * scale).to(dtype).to(DEVICE)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and torch.isfinite(out).all()
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == ref.dtype
    err = rel_error(out, ref)
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e} > {TOLERANCE[dtype]:.0e}"


# --- norms, rotary, activation, cache writes -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [64, 80])
def test_rms_norm(dtype, hidden):
    x = nonzero(7, hidden, dtype=dtype, seed=1)
    w = nonzero(hidden, dtype=dtype, seed=2)
    check(tk.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_per_head_on_a_qkv_view(dtype):
    """Qwen3's q/k norm: [T, heads, head_dim] views of the fused qkv output, normalised per head."""
    tokens, heads, kv_heads, dim = 5, 4, 2, 32
    qkv = nonzero(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, seed=3)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    w = nonzero(dim, dtype=dtype, seed=4)
    assert not q.is_contiguous()
    check(tk.rms_norm(q, w, 1e-6), reference.rms_norm(q, w, 1e-6), dtype)
    check(tk.rms_norm(k, w, 1e-6), reference.rms_norm(k, w, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_rms_norm(dtype):
    x = nonzero(9, 64, dtype=dtype, seed=5)
    res = nonzero(9, 64, dtype=dtype, seed=6, scale=3.0)
    w = nonzero(64, dtype=dtype, seed=7)
    out, new_res = tk.add_rms_norm(x, res, w, 1e-5)
    ref_out, ref_res = reference.add_rms_norm(x, res, w, 1e-5)
    check(out, ref_out, dtype)
    check(new_res, ref_res, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [32, 64])
def test_rotary_on_qkv_views(dtype, dim):
    tokens, heads, kv_heads = 6, 4, 2
    qkv = nonzero(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, seed=8)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    angles = torch.rand(tokens, dim // 2, generator=torch.Generator().manual_seed(9)) * 6.0
    cos, sin = angles.cos().to(dtype).to(DEVICE), angles.sin().to(dtype).to(DEVICE)
    ref_q, ref_k = reference.apply_rotary(q, cos, sin), reference.apply_rotary(k, cos, sin)
    check(tk.apply_rotary(q, cos, sin), ref_q, dtype)
    out_q, out_k = tk.apply_rotary_qk(q, k, cos, sin)
    check(out_q, ref_q, dtype)
    check(out_k, ref_k, dtype)
    before = qkv.clone()
    tk.apply_rotary_qk(q, k, cos, sin, inplace=True)  # rotates inside qkv, v untouched
    check(q, ref_q, dtype)
    check(k, ref_k, dtype)
    assert torch.equal(qkv[:, (heads + kv_heads) * dim :], before[:, (heads + kv_heads) * dim :])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [48, 64])
def test_silu_mul(dtype, inter):
    gate_up = nonzero(5, 2 * inter, dtype=dtype, seed=10, scale=2.0)
    check(tk.silu_mul(gate_up), reference.silu_mul(gate_up), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [16, 64])
def test_write_kv_skips_padding(dtype, block_size):
    tokens, kv_heads, dim, num_blocks = 7, 2, 32, 4
    qkv = nonzero(tokens, 4 * kv_heads * dim, dtype=dtype, seed=11)
    k = qkv[:, 2 * kv_heads * dim : 3 * kv_heads * dim].view(tokens, kv_heads, dim)
    v = qkv[:, 3 * kv_heads * dim :].view(tokens, kv_heads, dim)
    perm = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(12))
    slots = perm[:tokens].clone()
    slots[[2, 5]] = -1  # CUDA-graph padding
    slots = slots.to(DEVICE)
    k_cache = nonzero(num_blocks, block_size, kv_heads, dim, dtype=dtype, seed=13)
    v_cache = nonzero(num_blocks, block_size, kv_heads, dim, dtype=dtype, seed=14)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    real = slots >= 0
    reference.write_kv(k[real], v[real], ref_k, ref_v, slots[real])
    tk.write_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


# --- attention over the paged cache ----------------------------------------------------------------


def make_cache(lens, kv_heads, dim, block_size, dtype, seed, spare_cols=1):
    """A cache filled with random values, each sequence's blocks scattered (shuffled) over it."""
    needed = [-(-n // block_size) for n in lens]
    num_blocks = sum(needed) + 3
    k_cache = nonzero(num_blocks, block_size, kv_heads, dim, dtype=dtype, seed=seed)
    v_cache = nonzero(num_blocks, block_size, kv_heads, dim, dtype=dtype, seed=seed + 1)
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed + 2)).tolist()
    table = torch.zeros(len(lens), max(needed) + spare_cols, dtype=torch.int64)
    for i, n in enumerate(needed):
        table[i, :n] = torch.tensor(order[:n])
        order = order[n:]
    return k_cache, v_cache, table.to(DEVICE)


def decode_meta(lens, table):
    return AttentionMetadata(
        num_seqs=len(lens), num_decodes=len(lens), query_starts=list(range(len(lens))),
        query_lens=[1] * len(lens), context_lens=list(lens),
        slot_mapping=torch.zeros(len(lens), dtype=torch.long, device=DEVICE), block_tables=table,
        decode_context_lens=torch.tensor(lens, dtype=torch.long, device=DEVICE),
        query_start_loc=torch.arange(len(lens) + 1, dtype=torch.int32, device=DEVICE),
        context_lens_t=torch.tensor(lens, dtype=torch.int32, device=DEVICE), max_query_len=1,
    )


def mixed_meta(decode_lens, chunks, table):
    """Decodes first, then prefill chunks given as (context_len, query_len)."""
    query_lens = [1] * len(decode_lens) + [q for _, q in chunks]
    ctx = list(decode_lens) + [c for c, _ in chunks]
    starts = [sum(query_lens[:i]) for i in range(len(query_lens))]
    return AttentionMetadata(
        num_seqs=len(ctx), num_decodes=len(decode_lens), query_starts=starts, query_lens=query_lens,
        context_lens=ctx, slot_mapping=torch.zeros(sum(query_lens), dtype=torch.long, device=DEVICE),
        block_tables=table, decode_context_lens=torch.tensor(decode_lens, dtype=torch.long, device=DEVICE),
        query_start_loc=torch.tensor(starts + [sum(query_lens)], dtype=torch.int32, device=DEVICE),
        context_lens_t=torch.tensor(ctx, dtype=torch.int32, device=DEVICE), max_query_len=max(query_lens),
    )


def new_tokens(cache, table, meta):
    """This step's keys (or values) [T, kv_heads, dim], read back from the cache (written already)."""
    block_size = cache.shape[1]
    rows = []
    for i in range(meta.num_seqs):
        ctx, qlen = meta.context_lens[i], meta.query_lens[i]
        pos = torch.arange(ctx - qlen, ctx, device=DEVICE)
        rows.append(cache[table[i, pos // block_size], pos % block_size])
    return torch.cat(rows)


def reference_attention(q, k_cache, v_cache, table, meta, scale, window):
    k, v = new_tokens(k_cache, table, meta), new_tokens(v_cache, table, meta)
    return reference.paged_attention(q, k, v, k_cache, v_cache, meta, scale, window)


DECODE_CASES = [
    # (heads, kv_heads, dim, block_size, partition, window)
    pytest.param(4, 4, 64, 16, None, None, id="mha-d64-bs16"),
    pytest.param(8, 2, 128, 64, None, None, id="gqa4-d128-bs64"),
    pytest.param(8, 1, 64, 64, 48, None, id="gqa8-bs64-split48"),  # partitions cut blocks mid-way
    pytest.param(8, 2, 64, 16, 32, None, id="gqa4-bs16-split32"),
    pytest.param(4, 4, 128, 64, 32, None, id="mha-d128-bs64-split32"),  # two partitions per block
    pytest.param(8, 2, 64, 16, 48, 100, id="gqa4-window100-split48"),
    pytest.param(8, 1, 64, 64, None, 37, id="gqa8-window37"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads,kv_heads,dim,block_size,partition,window", DECODE_CASES)
def test_decode_attention(dtype, heads, kv_heads, dim, block_size, partition, window):
    lens = [1, 300, 17]
    k_cache, v_cache, table = make_cache(lens, kv_heads, dim, block_size, dtype, seed=20)
    if dtype == torch.float32:
        table = table.to(torch.int32)  # both index dtypes
    q = nonzero(len(lens), heads, dim, dtype=dtype, seed=23)
    meta = decode_meta(lens, table)
    scale = dim**-0.5
    ref = reference_attention(q, k_cache, v_cache, table.long(), meta, scale, window)
    out = tk.paged_decode_attention(
        q, k_cache, v_cache, table, meta.context_lens_t, scale, window, max_context_len=max(lens), partition=partition
    )
    check(out, ref, dtype)


def test_decode_attention_default_bound_and_poisoned_cache():
    """Without max_context_len the grid covers the whole block table; keys past each length (NaN
    here) are never read."""
    dtype, lens, block_size = torch.bfloat16, [5, 40, 23], 16
    k_cache, v_cache, table = make_cache(lens, 2, 64, block_size, dtype, seed=30, spare_cols=2)
    q = nonzero(len(lens), 8, 64, dtype=dtype, seed=33)
    meta = decode_meta(lens, table)
    ref = reference_attention(q, k_cache, v_cache, table, meta, 0.125, None)
    for i, n in enumerate(lens):  # poison the tail of each sequence's last block
        if n % block_size:
            k_cache[table[i, n // block_size], n % block_size :] = float("nan")
            v_cache[table[i, n // block_size], n % block_size :] = float("nan")
    out = tk.paged_decode_attention(q, k_cache, v_cache, table, meta.context_lens_t, 0.125, partition=16)
    check(out, ref, dtype)


@pytest.mark.parametrize("window", [None, 150], ids=["full", "window150"])
def test_decode_attention_rows_size_their_own_partitions(monkeypatch, window):
    """As a CUDA graph runs it: the grid sized for a large capacity, each row splitting its own
    context on the device (here into up to 5 partitions of 64, as on a GPU with many SMs)."""
    from app.engine.kernels.triton import decode_attention

    monkeypatch.setattr(decode_attention, "PROGRAMS_PER_SM", 64)
    dtype, lens, block_size = torch.float32, [300, 1, 17, 129], 16
    k_cache, v_cache, table = make_cache(lens, 2, 64, block_size, dtype, seed=35)
    q = nonzero(len(lens), 8, 64, dtype=dtype, seed=36)
    meta = decode_meta(lens, table)
    ref = reference_attention(q, k_cache, v_cache, table, meta, 0.125, window)
    out = tk.paged_decode_attention(q, k_cache, v_cache, table, meta.context_lens_t, 0.125, window, max_context_len=4096)
    check(out, ref, dtype)


PREFILL_CASES = [
    # (heads, kv_heads, dim, block_size, window)
    pytest.param(4, 4, 64, 16, None, id="mha-d64-bs16"),
    pytest.param(8, 2, 128, 64, None, id="gqa4-d128-bs64"),
    pytest.param(8, 1, 64, 16, None, id="gqa8-d64-bs16"),
    pytest.param(8, 2, 64, 64, 20, id="gqa4-window20"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads,kv_heads,dim,block_size,window", PREFILL_CASES)
def test_prefill_attention(dtype, heads, kv_heads, dim, block_size, window):
    """A prefix-cache hit (context 70, 6 new tokens), a fresh prompt (33 of 33) and a 1-token chunk."""
    chunks = [(70, 6), (33, 33), (9, 1)]
    k_cache, v_cache, table = make_cache([c for c, _ in chunks], kv_heads, dim, block_size, dtype, seed=40)
    meta = mixed_meta([], chunks, table)
    q = nonzero(sum(q for _, q in chunks), heads, dim, dtype=dtype, seed=43)
    scale = dim**-0.5
    ref = reference_attention(q, k_cache, v_cache, table, meta, scale, window)
    out = tk.paged_prefill_attention(
        q, k_cache, v_cache, table, meta.query_start_loc, meta.context_lens_t, meta.max_query_len, scale, window
    )
    check(out, ref, dtype)


@pytest.mark.parametrize("window", [None, 24], ids=["full", "window24"])
def test_paged_attention_mixed_batch(window):
    """The Ops-shaped adapter: decodes and prefill chunks in one flat batch."""
    dtype, heads, kv_heads, dim, block_size = torch.bfloat16, 8, 2, 64, 16
    decode_lens, chunks = [17, 1, 50], [(70, 6), (33, 33)]
    k_cache, v_cache, table = make_cache(decode_lens + [c for c, _ in chunks], kv_heads, dim, block_size, dtype, 50)
    meta = mixed_meta(decode_lens, chunks, table)
    q = nonzero(sum(meta.query_lens), heads, dim, dtype=dtype, seed=53)
    k, v = new_tokens(k_cache, table, meta), new_tokens(v_cache, table, meta)
    ref = reference.paged_attention(q, k, v, k_cache, v_cache, meta, dim**-0.5, window)
    check(tk.paged_attention(q, k, v, k_cache, v_cache, meta, dim**-0.5, window), ref, dtype)


# --- larger shapes, GPU only -----------------------------------------------------------------------


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norms_large(dtype):
    x = nonzero(333, 8192, dtype=dtype, seed=60)
    res = nonzero(333, 8192, dtype=dtype, seed=61)
    w = nonzero(8192, dtype=dtype, seed=62)
    out, new_res = tk.add_rms_norm(x, res, w, 1e-6)
    ref_out, ref_res = reference.add_rms_norm(x, res, w, 1e-6)
    check(out, ref_out, dtype)
    check(new_res, ref_res, dtype)
    qk = nonzero(333, 40, 128, dtype=dtype, seed=63)
    check(tk.rms_norm(qk, w[:128], 1e-6), reference.rms_norm(qk, w[:128], 1e-6), dtype)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("dim", [64, 128, 256])
def test_decode_attention_large(dtype, dim):
    """B = 260 rows of very different lengths (1 .. 5000), GQA 8, default partitioning, and batch 1
    with a long context (split across many partitions)."""
    gen = torch.Generator().manual_seed(70)
    lens = torch.randint(1, 600, (260,), generator=gen)
    lens[::37] = torch.randint(2000, 5000, (lens[::37].numel(),), generator=gen)
    lens[5] = 1
    lens = lens.tolist()
    k_cache, v_cache, table = make_cache(lens, 4, dim, 64, dtype, seed=71)
    q = nonzero(len(lens), 32, dim, dtype=dtype, seed=72)
    meta = decode_meta(lens, table)
    for window in (None, 1000):
        ref = reference_attention(q, k_cache, v_cache, table, meta, dim**-0.5, window)
        out = tk.paged_decode_attention(
            q, k_cache, v_cache, table, meta.context_lens_t, dim**-0.5, window, max_context_len=max(lens)
        )
        check(out, ref, dtype)
    long = [20000]
    k_cache, v_cache, table = make_cache(long, 8, dim, 16, dtype, seed=73)
    q = nonzero(1, 64, dim, dtype=dtype, seed=74)
    meta = decode_meta(long, table)
    ref = reference_attention(q, k_cache, v_cache, table, meta, dim**-0.5, None)
    check(tk.paged_decode_attention(q, k_cache, v_cache, table, meta.context_lens_t, dim**-0.5), ref, dtype)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("dim", [64, 128, 256])
@pytest.mark.parametrize("window", [None, 300], ids=["full", "window300"])
def test_prefill_attention_large(dtype, dim, window):
    chunks = [(2000, 512), (700, 700), (1500, 1), (4096, 1000), (129, 128)]
    k_cache, v_cache, table = make_cache([c for c, _ in chunks], 4, dim, 64, dtype, seed=80)
    meta = mixed_meta([], chunks, table)
    q = nonzero(sum(meta.query_lens), 20, dim, dtype=dtype, seed=83)  # G = 5
    ref = reference_attention(q, k_cache, v_cache, table, meta, dim**-0.5, window)
    out = tk.paged_prefill_attention(
        q, k_cache, v_cache, table, meta.query_start_loc, meta.context_lens_t, meta.max_query_len, dim**-0.5,
        window,
    )
    check(out, ref, dtype)


# --- sampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, vocab", [(5, 3000), pytest.param(64, 128256, marks=gpu)])
def test_sample_race_draws_the_reference_tokens(rows, vocab):
    """Same hash, same Gumbel formula: the Triton race picks the torch race's token in every row,
    with rows that keep everything, rows with a floor, and a row whose top token dominates."""
    from app.engine import sampling

    scaled = nonzero(rows, vocab, dtype=torch.float32, seed=20, scale=2.0)
    scaled[-1, 17] = 50.0
    floors = torch.full((rows,), float("-inf"), device=DEVICE)
    floors[1::2] = scaled[1::2].quantile(0.99, dim=1)
    keys = torch.randint(0, 1 << 32, (rows,), generator=torch.Generator().manual_seed(21)).to(DEVICE)
    ours = tk.sample_race(scaled, floors, keys)
    ref = sampling.race(scaled, floors, keys)
    assert ours.tolist() == ref.tolist()
    assert int(ours[-1]) == 17
    assert all(scaled[i, t] >= floors[i] for i, t in enumerate(ours.tolist()))
