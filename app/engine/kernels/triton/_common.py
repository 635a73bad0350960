"""Small helpers shared by the Triton kernels (no kernels here)."""

from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run in numpy on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether tl.dot operands must be fp32: for fp32 inputs (exact, "ieee"), and always under the
    interpreter, whose bf16 arithmetic is broken (NaN)."""
    return dtype == torch.float32 or interpreting()


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


if interpreting():
    _patch_interpreter_for_numpy_2_4()
