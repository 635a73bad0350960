"""Decoder layers with 4-bit AWQ weights for one-sequence decode steps, in six launches instead of ten.

At batch 1 the 4-bit weights of a layer stream in ~55 us on an H100, and every extra launch or
round trip costs a few microseconds more; the CUDA GEMV (csrc/w4a16) does the small ops around it
(w4a16_cuda.Norm, w4a16_cuda.RotaryKV):

  1. qkv:       RMSNorm while staging x; bias, rotary, KV-cache write when done
  2. attention: the split-K paged decode kernel and its merge (two launches)
  3. o_proj:    (+ bias) added to the residual stream
  4. gate_up:   RMSNorm while staging x (+ bias)
  5. down:      SiLU(gate) * up while staging x (+ bias), added to the residual stream

On one device the residual stream stays in fp32 from the first layer to the last (returned as
(hidden, None)): o_proj and down add their K slices' partial sums to it with atomic adds, so
those two GEMVs need no split-K hand-over, whose wait for the slowest slice was ~6% of a batch-1
step, and the norms read it as it is. Under tensor parallelism the row-parallel outputs are
summed over the ranks first, so there the layer keeps the per-op path's form: residual add in
the norms' staging, every output rounded to the model dtype where the separate ops round.
The dense counterpart is kernels/triton/fused_decode.py; both take the same DecodeStep.
"""

from __future__ import annotations

import torch

from app.engine.kernels import w4a16_cuda
from app.engine.kernels.triton.decode_attention import paged_decode_attention
from app.engine.kernels.triton.fused_decode import DecodeStep


def takes(layer) -> bool:
    """Whether the layer's linears hold packed 4-bit AWQ weights (this module's kind of layer)."""
    attn, mlp = layer.self_attn, layer.mlp
    return all(getattr(lin, "qweight", None) is not None
               for lin in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj))


class DecodeLayer:
    """One DecoderLayer's 4-bit weights and cache, checked once, for :func:`run`. ValueError where
    the fused GEMV cannot take the layer (the per-op path serves it)."""

    def __init__(self, layer, k_cache: torch.Tensor, v_cache: torch.Tensor):
        attn, mlp = layer.self_attn, layer.mlp
        if not takes(layer):
            raise ValueError("the 4-bit decode layer needs packed AWQ weights in every linear")
        dtype = layer.input_layernorm.weight.dtype
        if dtype not in w4a16_cuda.DTYPES or k_cache.dtype != dtype or not k_cache.is_cuda:
            raise ValueError(f"the 4-bit decode layer runs fp16/bf16 on a GPU with a cache of that dtype, not {dtype}")
        if not w4a16_cuda.available():
            raise ValueError(f"the 4-bit decode layer needs the CUDA W4A16 library: {w4a16_cuda.unavailable_reason()}")
        if attn.q_norm is not None:
            raise ValueError("the 4-bit decode layer has no q/k norm")
        d = attn.head_dim
        if d % 2 or w4a16_cuda.TILE_COLUMNS % d:
            raise ValueError(f"the 4-bit decode layer needs an even head size dividing {w4a16_cuda.TILE_COLUMNS}")
        if k_cache.shape[2] != attn.num_kv_heads or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
            raise ValueError("the KV cache does not fit the 4-bit decode layer")
        self.attn, self.mlp = attn, mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.k_cache, self.v_cache = k_cache, v_cache
        self.reduced = attn.o_proj.reduce is not None or mlp.down_proj.reduce is not None  # tensor parallel


def _gemv(linear, x: torch.Tensor, **fusions) -> torch.Tensor:
    return w4a16_cuda.w4a16_gemv(x, linear.qweight, linear.qzeros, linear.scales, linear.group_size, **fusions)


def _normed(norm, residual: torch.Tensor | None, like: torch.Tensor) -> tuple[w4a16_cuda.Norm, torch.Tensor]:
    """The GEMV's norm prologue and the residual after it (x itself in the first layer)."""
    if residual is None:
        return w4a16_cuda.Norm(norm.weight, norm.eps), like
    out = torch.empty_like(like)
    return w4a16_cuda.Norm(norm.weight, norm.eps, residual, out), out


def _attention(layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, norm: w4a16_cuda.Norm) -> torch.Tensor:
    """The attention's output before o_proj: qkv (with the norm, rotary and the KV write), attention."""
    attn = layer.attn
    rotary = w4a16_cuda.RotaryKV(attn.num_heads, attn.num_kv_heads, attn.head_dim, step.cos, step.sin, step.slots,
                                 layer.k_cache, layer.v_cache)
    q = _gemv(attn.qkv_proj, x, norm=norm, bias=attn.qkv_proj.bias, rotary_kv=rotary)
    out = paged_decode_attention(q.view(1, attn.num_heads, attn.head_dim), layer.k_cache, layer.v_cache,
                                 step.block_tables, step.context_lens, attn.scale, attn.sliding_window)
    return out.view(1, -1)


def run(layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, residual: torch.Tensor | None):
    """DecoderLayer.forward for a one-sequence decode step: (x, residual) for the next layer. On
    one device that is (the fp32 hidden state, None), and x may come as that; under tensor
    parallelism (mlp output, residual)."""
    if layer.reduced:
        return _run_reduced(layer, step, x, residual)
    attn, mlp = layer.attn, layer.mlp
    if x.dtype != torch.float32:  # the first layer (or one after a layer of another kind)
        x = x.float() if residual is None else x.float() + residual.float()
    out = _attention(layer, step, x, w4a16_cuda.Norm(layer.input_norm.weight, layer.input_norm.eps))
    _gemv(attn.o_proj, out, bias=attn.o_proj.bias, accumulate=x)
    gate_up = _gemv(mlp.gate_up_proj, x, norm=w4a16_cuda.Norm(layer.post_norm.weight, layer.post_norm.eps),
                    bias=mlp.gate_up_proj.bias)
    _gemv(mlp.down_proj, gate_up, silu_mul=True, bias=mlp.down_proj.bias, accumulate=x)
    return x, None


def _run_reduced(layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, residual: torch.Tensor | None):
    """run() under tensor parallelism: the layer holds this rank's heads and MLP slice, and the
    row-parallel outputs are summed over the ranks (the linears' reduce) before the next norm
    reads them."""
    attn, mlp = layer.attn, layer.mlp
    x = x.contiguous()
    norm, residual = _normed(layer.input_norm, residual, x)
    hidden = attn.o_proj(_attention(layer, step, x, norm))
    norm, residual = _normed(layer.post_norm, residual, hidden)
    gate_up = _gemv(mlp.gate_up_proj, hidden, norm=norm, bias=mlp.gate_up_proj.bias)
    return mlp.down_proj.forward_silu_mul(gate_up), residual
