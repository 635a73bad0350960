"""Ray is an optional extra: the rest of the app neither imports it nor needs it, and the cluster
commands say how to get it. Run in fresh interpreters where importing ray fails, as it does where
the extra is not installed."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import REPO

NO_RAY = "import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ModuleNotFoundError


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_RAY + code], check=False, capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_the_app_and_its_commands_import_no_ray() -> None:
    done = python("import app.cli, app.engine, app.server, app.commands.serve, app.ui.app\n"
                  "app.cli.main(['--help'])\n")
    assert done.returncode == 0, done.stderr
    assert "cluster" in done.stdout


def test_cluster_commands_say_how_to_get_ray() -> None:
    done = python("from app.cli import main\nsys.exit(main(['cluster', 'status']))\n")
    assert done.returncode == 1
    assert "the cluster commands need Ray Serve (no module 'ray'): pip install 'lmstation[cluster]'" in done.stderr
