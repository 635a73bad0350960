"""Small helpers shared by the Triton kernels (no kernels here)."""

from __future__ import annotations

import functools
import os

import torch
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401 (re-exported)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run in numpy on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether tl.dot operands must be fp32: for fp32 inputs (exact, "ieee"), and always under the
    interpreter, whose bf16 arithmetic is broken (NaN)."""
    return dtype == torch.float32 or interpreting()


@functools.lru_cache(maxsize=None)
def _pdl_on(index: int) -> bool:
    """Read once per device: the launch path asks for every kernel."""
    return os.environ.get("LMSTATION_PDL", "1") != "0" and torch.cuda.get_device_capability(index) >= (9, 0)


def pdl_launch(device: torch.device) -> dict:
    """Launch options for kernels written for programmatic dependent launch (a PDL constexpr):
    on Hopper and later a kernel may start while the one before it finishes (it loads what does
    not depend on it, then waits with gdc_wait). LMSTATION_PDL=0 (set before start) turns it off."""
    on = (device.type == "cuda" and not interpreting()
          and _pdl_on(device.index if device.index is not None else torch.cuda.current_device()))
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device (132 on an H100 SXM); 1 on CPU (interpreter)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _patch_interpreter_for_numpy_2_4() -> None:
    """Triton 3.6's interpreter turns a scalar tensor into a loop bound with int(array); a value
    loaded from memory is a 1-element array there, which numpy >= 2.4 refuses to convert. Re-patch
    __index__ through .item(). Interpreter only; a no-op where the interpreter's internals differ."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_lmstation_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patched._lmstation_fixed = True
    interpreter._patch_lang_tensor = patched


def _patch_interpreter_rounding() -> None:
    """The interpreter narrows fp32 to bf16 by truncation where the GPU rounds to nearest even;
    kernels that round intermediates to the model dtype would look worse under it than they are
    (its own round-to-nearest mode drops the carry into the exponent). Narrow fp32 to bf16 and
    fp16 the way the GPU does."""
    import numpy as np

    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_convert_float", None)
    if original is None or getattr(original, "_lmstation_fixed", False):
        return

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            bits = np.ascontiguousarray(input, dtype=np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            return np.where(np.isnan(input), np.uint16(0x7FC0), rounded)
        if input_dtype == tl.float32 and output_dtype == tl.float16:
            return np.asarray(input, dtype=np.float32).astype(np.float16).view(np.uint16)
        return original(input, input_dtype, output_dtype, rounding_mode)

    convert._lmstation_fixed = True
    interpreter._convert_float = convert


if interpreting():
    _patch_interpreter_for_numpy_2_4()
    _patch_interpreter_rounding()
