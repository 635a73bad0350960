"""The CPU kernel library must build wherever a C compiler is present, so the kernel tests that
skip without it can never hide a broken build."""

from __future__ import annotations

import shutil

import pytest
import torch

from app.engine.kernels import cpu_library, ops_for


@pytest.mark.skipif(not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")), reason="no C compiler here")
def test_cpu_kernels_build_and_serve_the_engine() -> None:
    library = cpu_library.library()
    assert library.cdll is not None, library.reason
    ops = ops_for(torch.device("cpu"))
    assert ops.bind_decode_layer is not None and ops.pack_linear is not None
