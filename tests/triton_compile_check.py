"""Every Triton kernel variant the CPU tests launched, compiled for real GPUs.

The CPU tests run the kernels under Triton's interpreter, which executes them as Python: code the
GPU compiler rejects can pass there (a constexpr branch that returns early still has the code
after it compiled for the GPU, and once broke every bf16 decode). So while the tests run, each
launch's kernel, argument types and constexpr values are recorded (``Recorder``), and at the end
this module, run as a script without the interpreter, compiles each variant — and the variants a
GPU launches in its place (``gpu_variants``) — for the GPU architectures below, down to the cubin,
through Triton's own launch path with a compile-only driver (nothing is launched: no GPU here).

Usage: python -m tests.triton_compile_check RECORDS.json
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ARCHS = (90, 89)  # Hopper (the GPU box, H100/H200); Ada (workstation cards: RTX 40xx, L40)
_INT32 = 1 << 31


def _is_constexpr(annotation: Any) -> bool:
    return "constexpr" in str(annotation)


def _spec(value: Any, constexpr: bool) -> Any:
    """A launch argument as JSON: what the compiler specializes on, not the value itself."""
    import torch

    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype).removeprefix("torch."), value.data_ptr() % 16 == 0]
    if constexpr or value is None or isinstance(value, (bool, str)):
        return ["value", value if isinstance(value, (bool, int, float, str, type(None))) else str(value)]
    if isinstance(value, int):  # Triton specializes ints on == 1, on divisibility by 16 and on width
        return ["int", 1 if value == 1 else (16 if value % 16 == 0 else 3) if -_INT32 <= value < _INT32 else 3 + _INT32 * 4]
    if isinstance(value, float):
        return ["float", 0.5]
    raise TypeError(f"unrecorded launch argument type {type(value).__name__}")


class Recorder:
    """Wraps the interpreter's launch to note each distinct kernel variant (then runs it)."""

    def __init__(self) -> None:
        self.variants: set[str] = set()

    def install(self) -> None:
        from triton.runtime.interpreter import InterpretedFunction

        original = InterpretedFunction.run
        recorder = self

        def run(self, *args, grid, warmup, **kwargs):
            recorder.note(self.fn, args, kwargs)
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

        InterpretedFunction.run = run

    def note(self, fn, args: tuple, kwargs: dict) -> None:
        params = inspect.signature(fn).parameters
        names = list(params)
        bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in params}
        for name in names[len(args):]:  # defaults the launch left out
            if name not in bound and params[name].default is not inspect.Parameter.empty:
                bound[name] = params[name].default
        options = {k: v for k, v in kwargs.items() if k not in params}
        record = {
            "module": fn.__module__, "name": fn.__qualname__,
            "args": {n: _spec(bound[n], _is_constexpr(params[n].annotation)) for n in names},
            "options": options,
        }
        self.variants.add(json.dumps(record, sort_keys=True))

    def save(self, path: Path) -> int:
        path.write_text("[\n" + ",\n".join(sorted(self.variants)) + "\n]\n")
        return len(self.variants)


# --- the compile side (a process without the interpreter) -------------------------------------------


def _compile_only_driver(arch: int):
    """A Triton driver that targets ``arch`` and can compile but not launch."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class CompileOnly(DriverBase):
        def __init__(self) -> None:
            self.target = GPUTarget("cuda", arch, 32)

        @classmethod
        def is_active(cls) -> bool:
            return False

        def get_current_target(self):
            return self.target

        def get_current_device(self) -> int:
            return arch  # kernels cache their compiled variants per device: one "device" per target

        def get_current_stream(self, device=None) -> int:
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_device_interface(self):
            raise RuntimeError("compile only")

        def map_python_to_cpp_type(self, ty: str) -> str:
            raise RuntimeError("compile only")

        def get_benchmarker(self):
            raise RuntimeError("compile only")

    return CompileOnly()


def _argument(spec: list, keep: list) -> Any:
    import torch

    kind = spec[0]
    if kind == "tensor":
        dtype = getattr(torch, spec[1])
        storage = torch.zeros(64, dtype=dtype)
        keep.append(storage)
        return storage if spec[2] else storage[1:]  # a tensor that does not start 16-byte aligned
    return spec[1]


def gpu_variants(record: dict, arch: int, arg_names: list[str]) -> list[dict]:
    """The variants a GPU launches where the interpreter launched ``record``: the interpreter makes
    every tl.dot take fp32 operands (DOT_FP32; a GPU dots bf16/fp16 as they are) and launches
    without programmatic dependent launch (PDL; Hopper and later launch with it)."""
    variants = [record]
    args = record["args"]
    first = next(args[name] for name in arg_names if args[name][0] == "tensor")  # the dot's input (q, x)
    if args.get("DOT_FP32") == ["value", True] and first[1] in ("bfloat16", "float16"):
        variants += [{**v, "args": {**v["args"], "DOT_FP32": ["value", False]}} for v in variants]
    if arch >= 90 and args.get("PDL") == ["value", False]:
        variants += [{**v, "args": {**v["args"], "PDL": ["value", True]}, "options": {**v["options"], "launch_pdl": True}}
                     for v in variants]
    return variants


def compile_all(records: list[dict], arch: int) -> list[str]:
    """Compiles every recorded variant (and its GPU twins) for sm_``arch``; returns the failures,
    described."""
    from triton.runtime.driver import driver

    driver.set_active(_compile_only_driver(arch))
    failures = []
    for recorded in records:
        kernel = importlib.import_module(recorded["module"])
        for part in recorded["name"].split("."):
            kernel = getattr(kernel, part)
        failures += _compile_variants(kernel, gpu_variants(recorded, arch, kernel.arg_names), arch)
    return failures


def _compile_variants(kernel, records: list[dict], arch: int) -> list[str]:
    failures = []
    for record in records:
        options = dict(record["options"])
        keep: list = []
        args = [_argument(record["args"][name], keep) for name in kernel.arg_names]
        try:
            kernel.run(*args, grid=(1,), warmup=True, **options)
        except Exception as exc:  # noqa: BLE001 (every failure is reported)
            constexprs = {k: v[1] for k, v in record["args"].items() if v[0] == "value"}
            root = exc
            while root.__cause__ is not None:  # a nested @triton.jit call's error names the real line
                root = root.__cause__
            failures.append(f"sm_{arch} {record['module']}.{record['name']} {constexprs}: "
                            f"{type(root).__name__}: {str(root).strip()[:2000]}")
    return failures


def _compile_job(job: tuple[list[dict], int]) -> list[str]:
    return compile_all(*job)


def main(path: str) -> int:
    records = json.loads(Path(path).read_text())
    started = time.monotonic()
    workers = max(1, os.cpu_count() or 1)
    jobs = [(records[i::workers], arch) for arch in ARCHS for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:  # compiling is CPU-bound: one process per core
        failures = [failure for done in pool.map(_compile_job, jobs) for failure in done]
    print(f"{len(records)} Triton kernel variants launched, compiled with their GPU twins for sm_"
          f"{', sm_'.join(map(str, ARCHS))} in "
          f"{time.monotonic() - started:.0f} s: {len(failures)} failed")
    for failure in failures:
        print(failure, end="\n\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
