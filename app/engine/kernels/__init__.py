"""Kernel selection: the one place that decides which implementation of each op runs.

The torch reference ops run everywhere (CPU, tests); device-specific kernels replace them
field by field where they exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import torch

from app.engine import kv_quant, sampling
from app.engine.kernels import reference


@dataclass(frozen=True)
class Ops:
    rms_norm: Callable
    add_rms_norm: Callable
    silu_mul: Callable
    apply_rotary_qk: Callable  # (q, k, cos, sin) -> (q, k): one launch where kernels fuse it
    write_kv: Callable
    paged_attention: Callable
    # The sampling draw (see app.engine.sampling.race): (scaled logits, floors, row keys) -> tokens.
    sample_race: Callable
    # Linear weights: ``pack`` re-lays a loaded [out, in] weight once (None: keep it as is);
    # ``packed_linear(x, packed)`` then computes x @ W^T from the packed form.
    pack_linear: Callable[[torch.Tensor], Any] | None = None
    packed_linear: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
    # A whole decoder layer for decode-only steps in one call, where a device has it:
    # ``bind_decode_layer(layer, k_cache, v_cache)`` once -> fn(step, x, residual) -> (out, residual),
    # with ``decode_step(cos, sin, slots, block_tables, context_lens)`` built once per step (None
    # where the whole-layer kernels do not take this step: the per-op path runs it).
    # x [M, K] @ a 4-bit AWQ weight (qweight, qzeros, scales, group_size) -> [M, N], dequantising
    # inside the kernel (None: AWQ weights are dequantised once at load and run as dense ones).
    w4a16: Callable | None = None
    # SwiGLU's down projection with AWQ weights: (gate_up [M, 2K], qweight, qzeros, scales,
    # group_size) -> silu(gate) * up @ W, in one launch where a kernel stages x itself (None:
    # silu_mul, then w4a16).
    w4a16_silu_mul: Callable | None = None
    bind_decode_layer: Callable | None = None
    decode_step: Callable | None = None
    name: str = "torch-reference"
    graph_safe: bool = False  # no host syncs or host-side lists in a decode step: CUDA graphs may capture it


REFERENCE_OPS = Ops(
    rms_norm=reference.rms_norm,
    add_rms_norm=reference.add_rms_norm,
    silu_mul=reference.silu_mul,
    apply_rotary_qk=reference.apply_rotary_qk,
    write_kv=reference.write_kv,
    paged_attention=reference.paged_attention,
    sample_race=sampling.race,
)


def _cpu_ops(fused_decode: bool) -> Ops:
    from app.engine.kernels import cpu_decode, cpu_linear

    ops = replace(
        REFERENCE_OPS,
        pack_linear=cpu_linear.pack_weight,
        packed_linear=cpu_linear.linear,
        name=f"torch-reference + cpu-gemv ({cpu_linear.backend()})",
    )
    if not fused_decode or not cpu_decode.available():
        return ops
    return replace(
        ops,
        bind_decode_layer=lambda layer, k, v: partial(cpu_decode.run, cpu_decode.DecodeLayer(layer, k, v)),
        decode_step=cpu_decode.DecodeStep,
        name=f"cpu fused decode + gemv ({cpu_linear.backend()}), torch-reference prefill",
    )


def _triton_ops() -> Ops:
    from app.engine.kernels import triton as tk
    from app.engine.kernels.triton import fused_decode

    return Ops(
        rms_norm=tk.rms_norm,
        add_rms_norm=tk.add_rms_norm,
        silu_mul=tk.silu_mul,
        apply_rotary_qk=tk.apply_rotary_qk,
        write_kv=tk.write_kv,
        paged_attention=tk.paged_attention,
        sample_race=tk.sample_race,
        bind_decode_layer=_bind_decode_layer,
        decode_step=fused_decode.decode_step,
        w4a16=_w4a16_gpu,
        w4a16_silu_mul=_w4a16_silu_mul_gpu,
        name="triton",
        graph_safe=True,
    )


def _bind_decode_layer(layer, k_cache: torch.Tensor, v_cache: torch.Tensor) -> Callable:
    """The whole-layer decode kernels for a layer's weights: the CUDA W4A16 GEMV's fused forms for
    packed 4-bit ones, Triton GEMVs for dense ones (ValueError where they do not take the layer)."""
    from app.engine.kernels import w4a16_decode
    from app.engine.kernels.triton import fused_decode

    if w4a16_decode.takes(layer):
        return partial(w4a16_decode.run, w4a16_decode.DecodeLayer(layer, k_cache, v_cache))
    return partial(fused_decode.run, fused_decode.DecodeLayer(layer, k_cache, v_cache))


def _cuda_w4a16_takes(x: torch.Tensor) -> bool:
    """Whether the CUDA W4A16 kernels (csrc/w4a16) are built and take x's dtype and device."""
    from app.engine.kernels import w4a16_cuda

    return x.dtype in w4a16_cuda.DTYPES and x.is_cuda and w4a16_cuda.available()


def _w4a16_gpu(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
               group_size: int) -> torch.Tensor:
    """W4A16 by batch size, for fp16/bf16 where the CUDA library is built: up to MAX_M rows the CUDA
    GEMV (csrc/w4a16), then the CUDA tensor-core GEMM below CUDA_GEMM_ROWS; elsewhere the Triton
    GEMM below DEQUANTIZE_ROWS. Past those (prefill) the weight is expanded once by a Triton
    kernel, then multiplied by cuBLAS."""
    from app.engine.kernels import w4a16_cuda
    from app.engine.kernels.triton import w4a16

    m, cuda = x.shape[0], _cuda_w4a16_takes(x)
    if cuda and m <= w4a16_cuda.MAX_M:
        return w4a16_cuda.w4a16_gemv(x, qweight, qzeros, scales, group_size)
    if cuda and m < CUDA_GEMM_ROWS and w4a16_cuda.gemm_takes(qweight.shape[0], group_size):
        return w4a16_cuda.w4a16_gemm(x, qweight, qzeros, scales, group_size)
    if m >= DEQUANTIZE_ROWS:
        return x @ w4a16.dequantize(qweight, qzeros, scales, group_size, x.dtype)
    return w4a16.w4a16_matmul(x, qweight, qzeros, scales, group_size)


def _w4a16_silu_mul_gpu(gate_up: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                        group_size: int) -> torch.Tensor:
    """silu(gate) * up @ W: the CUDA GEMV computes the activation while staging x; elsewhere the
    Triton silu-mul, then the W4A16 product by batch size."""
    from app.engine.kernels import w4a16_cuda
    from app.engine.kernels.triton import silu_mul

    if gate_up.shape[0] <= w4a16_cuda.MAX_M and _cuda_w4a16_takes(gate_up):
        return w4a16_cuda.w4a16_gemv(gate_up, qweight, qzeros, scales, group_size, silu_mul=True)
    return _w4a16_gpu(silu_mul(gate_up), qweight, qzeros, scales, group_size)


# Rows of x from which a W4A16 product expands the weight (Triton) and calls cuBLAS: the expansion
# moves 4.5 bytes a weight (read 0.5, write 2, cuBLAS reads 2). Measured on an H100 at gate_up's
# shape (docs/benchmarks.md): the Triton GEMM was 0.87x bf16 at 64 rows but 0.2x at 128, so it
# stops at 128; the CUDA GEMM took 174 us at 128 rows against the expansion's 236, 352 against
# 252 at 256 (crossing, interpolated, near 176).
DEQUANTIZE_ROWS = 128
CUDA_GEMM_ROWS = 176
# A prompt this long reaches every row range above: the engine's warm-up at load prefills one, so
# that no kernel (the expansion of 4-bit weights above all) compiles in the middle of a chat.
WARM_UP_ROWS = 256
assert WARM_UP_ROWS > max(DEQUANTIZE_ROWS, CUDA_GEMM_ROWS)


def with_cache_format(ops: Ops, fmt, model_dtype: torch.dtype, head_dim: int) -> Ops:
    """The ops for a KV cache stored other than in the model's dtype (kv_quant.CacheFormat: int8,
    int4, or another float). Both implementations write and read such caches (the Triton kernels
    quantize rows as they store them and dequantize them as they load them); the whole-layer decode
    kernels, which write and read the model's dtype only, stay off (CUDA graphs stay on). The
    Triton attention kernels take the rows' planes (kv_quant.Packing) of 16 elements or more."""
    if fmt.dtype == model_dtype:
        return ops
    if (fmt.quantized and ops.paged_attention is not REFERENCE_OPS.paged_attention
            and kv_quant.Packing.of(head_dim, fmt.bits).width < 16):
        raise ValueError(f"the GPU kernels take an {fmt.name} KV cache for head sizes of {128 // fmt.bits} "
                         f"or more; this model's is {head_dim}: choose int8 or a float cache")
    return replace(ops, bind_decode_layer=None, decode_step=None, name=f"{ops.name}; {fmt.name} KV cache")


KERNEL_CHOICES = ("auto", "torch", "triton")


def ops_for(device: torch.device, choice: str = "auto", tensor_parallel: int = 1) -> Ops:
    """auto: Triton kernels on CUDA (linears through cuBLAS); on CPU the torch reference with
    linears streaming packed weights (csrc/cpu); the torch reference anywhere else.
    "torch" forces the plain reference; "triton" forces Triton (on CPU: under TRITON_INTERPRET=1).
    Split over tensor-parallel ranks, the CPU's fused decode layer stays off: it adds o_proj's
    output to the residual inside, where the ranks' partial outputs must be summed first (the
    Triton one sums them between its kernels)."""
    from app.engine.kernels import triton as triton_kernels

    if choice == "torch":
        return REFERENCE_OPS
    if choice == "triton":
        if not triton_kernels.available():
            raise RuntimeError("Triton kernels need triton and a CUDA GPU (or TRITON_INTERPRET=1)")
        return _triton_ops()
    if device.type == "cpu":
        return _cpu_ops(fused_decode=tensor_parallel == 1)
    if device.type == "cuda" and triton_kernels.available():
        return _triton_ops()
    return REFERENCE_OPS
