"""Shared fixtures: tiny random-weight checkpoints and the converted starter model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import write_tiny_model


@pytest.fixture(scope="session")
def lmstation_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private user-data directory for the whole test session (never the real one)."""
    home = tmp_path_factory.mktemp("lmstation_home")
    os.environ["LMSTATION_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def starter_model(lmstation_home: Path) -> Path:
    from app.engine.starter import ensure_starter_model

    return ensure_starter_model()


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """Returns (folder, HF model) for a variant of tests.tiny_models.VARIANTS, written once per session."""
    made: dict[tuple, tuple[Path, object]] = {}

    def make(variant: str, **overrides):
        key = (variant, repr(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(variant)
            made[key] = (folder, write_tiny_model(folder, variant, **overrides))
        return made[key]

    return make


# --- Triton kernels: what the interpreter ran must also compile for GPUs (tests/triton_compile_check.py)

def _records_triton_launches() -> bool:
    """On machines without a GPU (CI), where the kernels run under the interpreter only."""
    import importlib.util

    import torch

    return importlib.util.find_spec("triton") is not None and not torch.cuda.is_available()


def pytest_configure(config: pytest.Config) -> None:
    if _records_triton_launches():
        # Before Triton is first imported: its own library functions (tl.max, ...) must be
        # interpreted too, as the kernel test modules arrange when they are the first to import it.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        from tests.triton_compile_check import Recorder

        config._triton_launches = Recorder()
        config._triton_launches.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Compiles every kernel variant the session launched; a failure fails the run."""
    import subprocess
    import sys
    import tempfile

    recorder = getattr(session.config, "_triton_launches", None)
    if recorder is None or not recorder.variants:
        return
    records = Path(tempfile.mkdtemp(prefix="triton-launches-")) / "launches.json"
    recorder.save(records)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.triton_compile_check", str(records)], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "Triton kernels compiled for GPUs", red=done.returncode != 0, green=done.returncode == 0)
        summary = done.stdout.strip().splitlines()[:1]  # "N variants compiled ... in S s: F failed"
        reporter.write_line((done.stdout + done.stderr).strip() if done.returncode else "".join(summary))
    if done.returncode:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
