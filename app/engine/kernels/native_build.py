"""Building and loading the native kernel libraries (csrc/cpu with the C compiler, csrc/w4a16
with nvcc): compiled on first use into the user cache under a name keyed by a hash of the
sources, headers and command, so an edited source rebuilds, and renamed into place when done, so
concurrent first runs never see half a file. Loaded with ctypes (plain C ABI)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["bind", "build_once", "bundled", "cache_dir"]


def cache_dir() -> Path:
    """Where built libraries live: $LMSTATION_HOME/cache/kernels, else the user cache."""
    home = os.environ.get("LMSTATION_HOME")
    if home:
        return Path(home).expanduser() / "cache" / "kernels"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("LMStation", appauthor=False)) / "kernels"


def bundled(prefix: str) -> str | None:
    """In the packaged app (PyInstaller), the library built with the bundle (``kernels/PREFIX.so``
    or ``.dll``), if it holds one: users need no compiler. None elsewhere."""
    if not getattr(sys, "frozen", False):
        return None
    path = Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "kernels" / (
        prefix + (".dll" if os.name == "nt" else ".so"))
    return str(path) if path.is_file() else None


def build_once(target_dir: Path, prefix: str, key: Sequence[str], inputs: Sequence[Path],
               command: Callable[[str], list[str]], timeout_s: float,
               failure: Callable[[subprocess.CompletedProcess], str]) -> Path:
    """The library ``target_dir/prefix-<hash>.so|.dll`` built by ``command(output path)``, where
    the hash covers ``key`` (compiler, version, flags) and the ``inputs``' names and bytes. Built
    only when missing; raises RuntimeError(``failure(process)``) when the command fails."""
    digest = hashlib.sha256("\0".join(key).encode())
    for path in sorted(inputs):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    suffix = ".dll" if os.name == "nt" else ".so"
    target = target_dir / f"{prefix}-{digest.hexdigest()[:16]}{suffix}"
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=target_dir)
    os.close(fd)
    try:
        proc = subprocess.run(command(tmp), capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(failure(proc))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def bind(lib: ctypes.CDLL, signatures: dict[str, tuple[list, type | None]]) -> ctypes.CDLL:
    """Declares each exported function's (argument types, result type); returns ``lib``."""
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib
