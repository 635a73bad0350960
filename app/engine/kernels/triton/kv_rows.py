"""Reading KV cache rows inside the attention kernels: as stored (a float cache), or int8 / int4
rows dequantized on the fly (layout in app/engine/kv_quant.py: the integers, then the row's fp16
scale and minimum). Quantized rows come back still turned by the Hadamard matrix R; the kernels'
callers turn the query before and the output after (q·k = (qR)·(kR))."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_rows(base_ptr, row_off, mask, HEAD_DIM: tl.constexpr, BITS: tl.constexpr, MASKED: tl.constexpr):
    """[N, HEAD_DIM] rows starting at base_ptr + row_off (element offsets); BITS 0: the cache's
    own dtype, 8 or 4: dequantized, fp32. Rows where mask is false read as zeros (MASKED)."""
    d = tl.arange(0, HEAD_DIM)
    # One return at the end: Triton compiles the code after a constexpr branch's return as well.
    if BITS == 0:
        if MASKED:
            rows = tl.load(base_ptr + row_off[:, None] + d[None, :], mask=mask[:, None], other=0.0)
        else:
            rows = tl.load(base_ptr + row_off[:, None] + d[None, :])
    else:
        # The integers as 32-bit words: a row is 4-byte aligned (its 4 + HEAD_DIM * BITS / 8 bytes are
        # a multiple of 4) but not 16-byte, so byte loads would be all Triton can prove; words are 4x
        # fewer loads. Word i holds elements PER_WORD * i .. in its bytes (int8) or nibbles (int4),
        # lowest first; the planes of each byte or nibble are interleaved back into that order.
        word = tl.arange(0, HEAD_DIM * BITS // 32)
        words_ptr = (base_ptr + row_off[:, None]).to(tl.pointer_type(tl.int32))
        w = tl.load(words_ptr + word[None, :], mask=mask[:, None], other=0)
        if BITS == 8:
            b0, b1, b2, b3 = w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF, (w >> 24) & 0xFF
            q = tl.interleave(tl.interleave(b0, b2), tl.interleave(b1, b3)).to(tl.float32)
        else:
            n0, n1, n2, n3 = w & 0xF, (w >> 4) & 0xF, (w >> 8) & 0xF, (w >> 12) & 0xF
            n4, n5, n6, n7 = (w >> 16) & 0xF, (w >> 20) & 0xF, (w >> 24) & 0xF, (w >> 28) & 0xF
            evens = tl.interleave(tl.interleave(n0, n4), tl.interleave(n2, n6))
            odds = tl.interleave(tl.interleave(n1, n5), tl.interleave(n3, n7))
            q = tl.interleave(evens, odds).to(tl.float32)
        params = row_off + HEAD_DIM * BITS // 8
        at = (base_ptr + params).to(tl.pointer_type(tl.float16))  # rows keep the fp16 pair 2-byte aligned
        scale = tl.load(at, mask=mask, other=0.0).to(tl.float32)
        low = tl.load(at + 1, mask=mask, other=0.0).to(tl.float32)
        rows = q * scale[:, None] + low[:, None]
    return rows
