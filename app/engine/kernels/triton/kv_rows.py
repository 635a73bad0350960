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
        if BITS == 8:
            q = tl.load(base_ptr + row_off[:, None] + d[None, :], mask=mask[:, None], other=0).to(tl.float32)
            params = row_off + HEAD_DIM
        else:
            pair = tl.arange(0, HEAD_DIM // 2)
            packed = tl.load(base_ptr + row_off[:, None] + pair[None, :], mask=mask[:, None], other=0)
            q = tl.interleave(packed & 0xF, packed >> 4).to(tl.float32)  # element 2i low nibble, 2i + 1 high
            params = row_off + HEAD_DIM // 2
        at = (base_ptr + params).to(tl.pointer_type(tl.float16))  # rows keep the fp16 pair 2-byte aligned
        scale = tl.load(at, mask=mask, other=0.0).to(tl.float32)
        low = tl.load(at + 1, mask=mask, other=0.0).to(tl.float32)
        rows = q * scale[:, None] + low[:, None]
    return rows
