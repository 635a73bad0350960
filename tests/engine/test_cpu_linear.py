"""cpu_linear against F.linear in fp32: every instruction set this CPU has, odd shapes, the fallbacks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.engine.kernels import cpu_library, cpu_linear

SHAPES = [(1, 1), (577, 1000), (1000, 577), (33, 7), (64, 130), (3, 1536)]  # (out, in)
BATCHES = [1, 2, 3, 7, 16, 33]
TOLERANCE = {torch.bfloat16: 1e-2, torch.float32: 1e-4}


def nonzero(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random values with |v| >= 0.1, so no term silently drops out of a dot product."""
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return (t + torch.where(t >= 0, 0.1, -0.1)).to(dtype)


def rel_error(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> float:
    """Norm-wise error against fp32 F.linear on the same (already rounded) inputs."""
    ref = F.linear(x.float(), w.float())
    return ((y.float() - ref).norm() / ref.norm()).item()


def isa_levels() -> list[int]:
    if not cpu_linear.available():
        return []
    return list(range(cpu_library.library().cdll.lms_max_isa() + 1))


@pytest.fixture(params=isa_levels() or [None], ids=lambda level: f"isa{level}")
def isa(request: pytest.FixtureRequest) -> Iterator[int]:
    """Forces each instruction set in turn, restoring the best one afterwards."""
    if request.param is None:
        pytest.skip(f"C kernel unavailable: {cpu_linear.unavailable_reason()}")
    lib = cpu_library.library().cdll
    lib.lms_set_isa(request.param)
    yield request.param
    lib.lms_set_isa(-1)


@pytest.fixture
def torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_library, "library", lambda: cpu_library.Library(None, "forced off by the test"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_kernel_matches_fp32_reference(isa: int, shape: tuple[int, int], dtype: torch.dtype) -> None:
    out, inp = shape
    w = nonzero(out, inp, dtype=dtype, seed=out * 7 + inp)
    packed = cpu_linear.pack_weight(w)
    assert packed.kind == "gemv"
    for batch in BATCHES:
        x = nonzero(batch, inp, dtype=dtype, seed=batch)
        y = cpu_linear.linear(x, packed)
        assert y.shape == (batch, out) and y.dtype == dtype
        assert rel_error(y, x, w) <= TOLERANCE[dtype], (batch, shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_threads_agree_with_single_thread(isa: int, dtype: torch.dtype) -> None:
    w = nonzero(1000, 577, dtype=dtype, seed=1)
    x = nonzero(5, 577, dtype=dtype, seed=2)
    packed = cpu_linear.pack_weight(w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = cpu_linear.linear(x, packed)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(cpu_linear.linear(x, packed), single, rtol=0, atol=0)


def test_bf16_output_rounds_like_torch(isa: int) -> None:
    w = nonzero(64, 130, dtype=torch.bfloat16, seed=3)
    x = nonzero(4, 130, dtype=torch.bfloat16, seed=4)
    y = cpu_linear.linear(x, cpu_linear.pack_weight(w))
    # fp32 sums differ only in order, so the bf16 results are at most one ulp apart.
    torch.testing.assert_close(y, F.linear(x.float(), w.float()).bfloat16(), rtol=2**-7, atol=1e-3)


def test_shapes_strides_and_dtypes() -> None:
    w = nonzero(96, 200, dtype=torch.bfloat16, seed=5)
    packed = cpu_linear.pack_weight(w)
    x3 = nonzero(2, 3, 200, dtype=torch.bfloat16, seed=6)
    assert cpu_linear.linear(x3, packed).shape == (2, 3, 96)
    wide = nonzero(4, 300, dtype=torch.bfloat16, seed=7)
    assert rel_error(cpu_linear.linear(wide[:, :200], packed), wide[:, :200], w) <= 1e-2  # row stride 300
    columns = nonzero(200, 4, dtype=torch.bfloat16, seed=8).t()  # column stride 4
    assert rel_error(cpu_linear.linear(columns, packed), columns, w) <= 1e-2
    y32 = cpu_linear.linear(x3.float(), packed)
    assert y32.dtype == torch.float32
    assert cpu_linear.linear(x3[:0], packed).shape == (0, 3, 96)
    with pytest.raises(ValueError):
        cpu_linear.linear(nonzero(1, 199, dtype=torch.bfloat16, seed=8), packed)


@pytest.mark.usefixtures("torch_only")
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "plain"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16], ids=["bf16", "fp32", "fp16"])
def test_torch_fallback(monkeypatch: pytest.MonkeyPatch, onednn: bool, dtype: torch.dtype) -> None:
    if not onednn:
        monkeypatch.setattr(cpu_linear, "_onednn_pack", lambda w: None)
    assert not cpu_linear.available() and cpu_linear.backend() == "torch"
    w = nonzero(577, 1000, dtype=dtype, seed=9)
    packed = cpu_linear.pack_weight(w)
    assert packed.kind in (("onednn", "plain") if onednn else ("plain",))
    for batch in (1, 3, 16, 33):
        x = nonzero(batch, 1000, dtype=dtype, seed=batch)
        y = cpu_linear.linear(x, packed)
        assert y.dtype == dtype
        assert rel_error(y, x, w) <= TOLERANCE.get(dtype, 1e-2)


def test_build_failure_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMSTATION_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.delenv("LMSTATION_NO_CPU_KERNELS", raising=False)
    monkeypatch.delenv("LMSTATION_CPU_KERNELS_LIB", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = cpu_library.library.__wrapped__()
    assert lib.cdll is None and lib.reason
    assert len(caught) == 1 and "unavailable" in str(caught[0].message)
