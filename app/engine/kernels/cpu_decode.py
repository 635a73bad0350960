"""Fused CPU decoder layer for decode steps: one native call per layer.

In a decode step (one new token per sequence) at batch 1-16, the ~40 small torch
ops between a layer's four linears (norms, rotary, KV-cache write, paged
attention, silu*up, residual adds) cost 2-10 us of dispatch each: together as
long as the linears. ``csrc/cpu/decode_layer.c`` runs all of
``DecoderLayer.forward`` for such a step in one call, inside torch's OpenMP
pool, rounding to the model dtype wherever the torch ops do, so its results
track the torch path closely.

Usage::

    layers = [DecodeLayer(layer, k_cache, v_cache) for ...]          # load time
    step = DecodeStep(cos, sin, slots, block_tables, context_lens)   # per step
    x, residual = run(layers[0], step, x, None)                      # per layer
    x, residual = run(layers[1], step, x, residual) ...

Only bf16 and fp32 models, CPU tensors, and steps that are all decodes; check
:func:`available` and keep the torch path as the fallback. Inference only.
"""

from __future__ import annotations

import ctypes
from typing import Protocol

import torch

from app.engine.kernels import cpu_library, cpu_linear
from app.engine.kernels.cpu_linear import PackedWeight

__all__ = ["DecodeLayer", "DecodeStep", "available", "run", "unavailable_reason"]

_DTYPES = (torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # as in decode_layer.c
# lms_decode_layer's return codes (LMS_E* in decode_layer.c)
_ERRORS = {
    -1: "the layer's shapes or tensors are invalid",
    -2: "the step does not fit the layer (dtype, head size, shapes)",
    -3: "a cache slot is outside the KV cache",
    -4: "a context length is below 1 or beyond the block table",
    -5: "a block table entry is outside the KV cache",
    -6: "out of memory",
}


class _Linear(Protocol):
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    packed: PackedWeight | None


class _LayerArgs(ctypes.Structure):
    """lms_layer_t of decode_layer.c."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in (
            "bf16", "hidden", "num_heads", "num_kv_heads", "head_dim", "inter", "num_blocks", "block_size", "window")),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        *((name, ctypes.c_void_p) for name in (
            "input_norm", "post_norm", "q_norm", "k_norm", "w_qkv", "b_qkv", "w_o", "b_o",
            "w_gate_up", "b_gate_up", "w_down", "b_down", "k_cache", "v_cache")),
    ]


class _StepArgs(ctypes.Structure):
    """lms_step_t of decode_layer.c."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in ("n", "bf16", "half_dim", "nthreads")),
        *((name, ctypes.c_void_p) for name in ("cos", "sin", "slots", "block_tables")),
        ("table_stride", ctypes.c_int64),
        ("table_width", ctypes.c_int64),
        ("context_lens", ctypes.c_void_p),
    ]


def available(dtype: torch.dtype | None = None) -> bool:
    """Whether the fused layer can run (the library is built and, if given, supports ``dtype``)."""
    return cpu_library.library().cdll is not None and (dtype is None or dtype in _DTYPES)


def unavailable_reason(dtype: torch.dtype | None = None) -> str:
    """Why :func:`available` is False for ``dtype``; empty when it is True."""
    reason = cpu_library.library().reason
    if not reason and dtype is not None and dtype not in _DTYPES:
        reason = f"{dtype} is not supported (bf16 and fp32 are)"
    return reason


def _packed(linear: _Linear) -> PackedWeight:
    """The engine's packed weight (``Linear.pack``) if it has one, else a packed copy."""
    return linear.packed if linear.packed is not None else cpu_linear.pack_weight(linear.weight)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class DecodeLayer:
    """A decoder layer's constant arguments (weights, norms, its KV cache), built once at load.

    ``layer`` is an ``app.engine.models.decoder.DecoderLayer``. Its linears' packed weights
    (``Linear.pack`` with the CPU ops) are shared; unpacked ones are packed into a copy.
    The object keeps every tensor it points at alive.
    """

    def __init__(self, layer: torch.nn.Module, k_cache: torch.Tensor, v_cache: torch.Tensor):
        if not available():
            raise RuntimeError(f"the fused decode layer is unavailable: {unavailable_reason()}")
        attn, mlp = layer.self_attn, layer.mlp
        dtype = layer.input_layernorm.weight.dtype
        if dtype not in _DTYPES:
            raise ValueError(f"{dtype} is not supported (bf16 and fp32 are)")
        hidden, heads, kv_heads, head_dim = attn.o_proj.out_features, attn.num_heads, attn.num_kv_heads, attn.head_dim
        if head_dim % 2 or head_dim > MAX_HEAD_DIM or heads % kv_heads:
            raise ValueError(f"unsupported attention shape: {heads} heads, {kv_heads} kv heads, head_dim {head_dim}")
        if k_cache.shape != v_cache.shape or k_cache.dim() != 4 or tuple(k_cache.shape[2:]) != (kv_heads, head_dim):
            raise ValueError(f"KV caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} do not fit "
                             f"[blocks, block_size, {kv_heads}, {head_dim}]")
        for cache in (k_cache, v_cache):
            if cache.dtype != dtype or not cache.is_cpu or not cache.is_contiguous():
                raise ValueError(f"KV caches must be contiguous {dtype} CPU tensors")
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        if attn.q_norm is not None:
            norms += [attn.q_norm, attn.k_norm]
        if len({norm.eps for norm in norms}) != 1:
            raise ValueError("the layer's norms use different eps")

        linears = {"qkv": attn.qkv_proj, "o": attn.o_proj, "gate_up": mlp.gate_up_proj, "down": mlp.down_proj}
        packed = {name: _packed(linear) for name, linear in linears.items()}
        inter = packed["gate_up"].out_features // 2
        shapes = {"qkv": ((heads + 2 * kv_heads) * head_dim, hidden), "o": (hidden, heads * head_dim),
                  "gate_up": (2 * inter, hidden), "down": (hidden, inter)}
        for name, p in packed.items():
            if p.kind != "gemv" or p.dtype != dtype or (p.out_features, p.in_features) != shapes[name]:
                raise ValueError(f"{name} weight: need a {dtype} gemv-packed {shapes[name]}, "
                                 f"got {p.kind} {p.dtype} {(p.out_features, p.in_features)}")

        def tensor(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(dtype).contiguous()

        biases = {name: tensor(linear.bias) for name, linear in linears.items()}
        norm_weights = [tensor(norm.weight) for norm in norms]
        self.dtype, self.hidden = dtype, hidden
        self._keep = (k_cache, v_cache, packed, biases, norm_weights)
        q_norm, k_norm = norm_weights[2:] if len(norm_weights) == 4 else (None, None)
        self._args = _LayerArgs(
            bf16=dtype == torch.bfloat16, hidden=hidden, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            inter=inter, num_blocks=k_cache.shape[0], block_size=k_cache.shape[1], window=attn.sliding_window or 0,
            eps=norms[0].eps, scale=attn.scale,
            input_norm=_ptr(norm_weights[0]), post_norm=_ptr(norm_weights[1]), q_norm=_ptr(q_norm), k_norm=_ptr(k_norm),
            w_qkv=_ptr(packed["qkv"].data), b_qkv=_ptr(biases["qkv"]), w_o=_ptr(packed["o"].data),
            b_o=_ptr(biases["o"]), w_gate_up=_ptr(packed["gate_up"].data), b_gate_up=_ptr(biases["gate_up"]),
            w_down=_ptr(packed["down"].data), b_down=_ptr(biases["down"]),
            k_cache=_ptr(k_cache), v_cache=_ptr(v_cache),
        )
        self._address = ctypes.addressof(self._args)
        self._kernel = cpu_library.library().cdll.lms_decode_layer


class DecodeStep:
    """One decode step's arguments, shared by every layer: built once per step.

    cos, sin: [n, head_dim/2] of the model dtype (``RotaryEmbedding``'s output);
    slots: [n] int64 cache slot of each new token; block_tables: [>= n, blocks] int64 (rows
    past n are not read); context_lens: [n] int64 tokens each row attends to, the new one
    included. Validated here for shapes and dtypes, and by the kernel for every index.
    """

    def __init__(
        self,
        cos: torch.Tensor,
        sin: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
    ):
        n = slots.shape[0]
        cos, sin, slots, context_lens = (t.contiguous() for t in (cos, sin, slots, context_lens))
        if block_tables.stride(-1) != 1:
            block_tables = block_tables.contiguous()
        tensors = (cos, sin, slots, block_tables, context_lens)
        if not all(t.is_cpu for t in tensors):
            raise ValueError("decode step tensors must be on the CPU")
        if cos.dtype != sin.dtype or cos.dim() != 2 or cos.shape != sin.shape or cos.shape[0] != n:
            raise ValueError(f"cos/sin must both be [{n}, head_dim/2], got {tuple(cos.shape)}, {tuple(sin.shape)}")
        for t in (slots, block_tables, context_lens):
            if t.dtype != torch.int64:
                raise ValueError(f"slots, block tables and context lengths must be int64, got {t.dtype}")
        if context_lens.shape != (n,) or slots.dim() != 1 or block_tables.dim() != 2 or block_tables.shape[0] < n:
            raise ValueError(f"slots [{n}], block_tables [{n}, blocks], context_lens [{n}] expected; got "
                             f"{tuple(slots.shape)}, {tuple(block_tables.shape)}, {tuple(context_lens.shape)}")
        self.n = n
        self._keep = tensors
        self._args = _StepArgs(
            n=n, bf16=cos.dtype == torch.bfloat16, half_dim=cos.shape[1], nthreads=torch.get_num_threads(),
            cos=_ptr(cos), sin=_ptr(sin), slots=_ptr(slots), block_tables=_ptr(block_tables),
            table_stride=block_tables.stride(0), table_width=block_tables.shape[1], context_lens=_ptr(context_lens),
        )
        self._address = ctypes.addressof(self._args)


def run(
    layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``DecoderLayer.forward`` for a decode step: returns (out, residual), both [n, hidden].

    ``residual`` is None in the first layer. Writes this step's keys and values to the
    layer's KV cache. Raises ValueError on arguments the kernel rejects.
    """
    shape = (step.n, layer.hidden)
    for t in (x, residual):
        if t is not None and (t.shape != shape or t.dtype != layer.dtype or not t.is_cpu or not t.is_contiguous()):
            raise ValueError(f"x and residual must be contiguous {layer.dtype} CPU tensors of shape {shape}")
    out, new_residual = torch.empty_like(x), torch.empty_like(x)  # the cheapest allocation: ~0.8 us each
    if not step.n:
        return out, new_residual
    rc = layer._kernel(
        layer._address, step._address, x.data_ptr(), None if residual is None else residual.data_ptr(),
        out.data_ptr(), new_residual.data_ptr(),
    )
    if rc:
        raise ValueError(f"fused decode layer: {_ERRORS.get(rc, f'error {rc}')}")
    return out, new_residual
