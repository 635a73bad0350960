"""Reading KV cache rows inside the attention kernels: as stored (a float cache), or int8 / int4
rows (layout in app/engine/kv_quant.py: a block's integers packed in planes, 16-byte aligned
rows, then its rows' fp16 scales and minimums). Quantized rows are still turned by the Hadamard
matrix R; the kernels' callers turn the query before and the output after (q·k = (qR)·(kR)).

The integers are read as units (32-bit words where the packing allows), and each plane, a shift
and a mask away, is a contiguous slice of the row's elements.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fp16 with exponent 10 and the integer in its mantissa: the value 1024 + n, exact for n < 1024.
# So an int8/int4 field becomes a tensor-core operand with two integer ops, no conversion.
FP16_1024 = tl.constexpr(0x6400)


@triton.jit
def tile_blocks(table, start, pos, mask, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The cache block of each key position of a tile starting at `start` (BLOCK_N-aligned):
    one table entry when the tile lies in one block, else one per position (0 where masked)."""
    if BLOCK_N <= BLOCK_SIZE:
        block = tl.load(table + start // BLOCK_SIZE).to(tl.int64)
    else:
        block = tl.load(table + pos // BLOCK_SIZE, mask=mask, other=0).to(tl.int64)
    return block


@triton.jit
def load_units(base_ptr, row_off, mask, WIDTH: tl.constexpr, UNIT_BITS: tl.constexpr):
    """[N, WIDTH] int32: the rows' integer units, zeros where mask is false."""
    u = tl.arange(0, WIDTH)
    if UNIT_BITS == 32:
        ptr = (base_ptr + row_off[:, None]).to(tl.pointer_type(tl.int32)) + u[None, :]
    elif UNIT_BITS == 16:
        ptr = (base_ptr + row_off[:, None]).to(tl.pointer_type(tl.int16)) + u[None, :]
    else:
        ptr = base_ptr + row_off[:, None] + u[None, :]
    return tl.load(ptr, mask=mask[:, None], other=0).to(tl.int32)


@triton.jit
def plane(units, f: tl.constexpr, BITS: tl.constexpr):
    """Field f of every unit, as int32: elements f * W .. f * W + W - 1 of each row."""
    return (units >> (f * BITS)) & ((1 << BITS) - 1)


@triton.jit
def plane_fp16(units, f: tl.constexpr, BITS: tl.constexpr):
    """Field f as fp16 holding 1024 + n (callers take 1024 x the other operand's sum back)."""
    return (plane(units, f, BITS) | FP16_1024).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def load_params(params_ptr, row_off, mask):
    """(scale, minimum) [N] fp32 of each row: the 32-bit word at params_ptr + row_off (bytes; 0
    where masked)."""
    word = tl.load((params_ptr + row_off).to(tl.pointer_type(tl.int32)), mask=mask, other=0)
    scale = (word & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    low = ((word >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return scale, low


@triton.jit
def _side_by_side(a, b):
    """[N, W] and [N, W] -> [N, 2W]: a's columns, then b's."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (a.shape[0], 2 * a.shape[1]))


@triton.jit
def _dequantized_plane(units, f: tl.constexpr, BITS: tl.constexpr, scale, low):
    return plane(units, f, BITS).to(tl.float32) * scale[:, None] + low[:, None]


@triton.jit
def load_rows(base_ptr, row_off, mask, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    """[N, HEAD_DIM] float rows starting at base_ptr + row_off (element offsets), in the cache's
    dtype; rows where mask is false read as zeros (MASKED)."""
    d = tl.arange(0, HEAD_DIM)
    if MASKED:
        rows = tl.load(base_ptr + row_off[:, None] + d[None, :], mask=mask[:, None], other=0.0)
    else:
        rows = tl.load(base_ptr + row_off[:, None] + d[None, :])
    return rows


@triton.jit
def load_quantized_rows(ints_ptr, int_off, params_ptr, param_off, mask, HEAD_DIM: tl.constexpr,
                        BITS: tl.constexpr, UNIT_BITS: tl.constexpr):
    """[N, HEAD_DIM] int8/int4 rows dequantized, fp32, in element order: the planes put side by
    side, for kernels that need whole rows (the prefill's). UNIT_BITS: kv_quant.Packing's; the
    integers at ints_ptr + int_off, the pairs at params_ptr + param_off (bytes); masked rows 0."""
    PLANES: tl.constexpr = UNIT_BITS // BITS
    units = load_units(ints_ptr, int_off, mask, HEAD_DIM // PLANES, UNIT_BITS)
    scale, low = load_params(params_ptr, param_off, mask)
    rows = _dequantized_plane(units, 0, BITS, scale, low)
    if PLANES >= 2:
        rows = _side_by_side(rows, _dequantized_plane(units, 1, BITS, scale, low))
    if PLANES >= 4:
        rows = _side_by_side(rows, _side_by_side(_dequantized_plane(units, 2, BITS, scale, low),
                                                 _dequantized_plane(units, 3, BITS, scale, low)))
    if PLANES == 8:
        rows = _side_by_side(
            rows,
            _side_by_side(_side_by_side(_dequantized_plane(units, 4, BITS, scale, low),
                                        _dequantized_plane(units, 5, BITS, scale, low)),
                          _side_by_side(_dequantized_plane(units, 6, BITS, scale, low),
                                        _dequantized_plane(units, 7, BITS, scale, low))))
    return rows
