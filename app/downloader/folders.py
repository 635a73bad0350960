"""Where a download lives on disk, and how a finished one is told from a half-done one: files arrive in a
hidden ``.<name>.partial`` folder next to the destination, which is renamed into place only once every
file is verified, with a manifest naming the repository and revision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MANIFEST = ".lmstation-download.json"
_REVISION = ".revision"  # inside the staging folder: which commit its files belong to


def default_dest(repo: str) -> Path:
    from app.paths import models_dir

    return models_dir() / repo.replace("/", "--")


def staging_dir(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.partial"


def is_staging(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".partial")


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a finished download, or None (not a download, or not finished)."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def staging_matches(staging: Path, revision_key: str) -> bool:
    """Whether the files in ``staging`` belong to this revision, so they can be kept."""
    try:
        return (staging / _REVISION).read_text(encoding="utf-8") == revision_key
    except OSError:
        return False


def prepare_staging(staging: Path, revision_key: str) -> None:
    """Keeps what an earlier attempt at the same revision left; starts over when the revision changed."""
    if staging.exists() and not staging_matches(staging, revision_key):
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / _REVISION).write_text(revision_key, encoding="utf-8")


def finish(staging: Path, dest: Path, manifest: dict) -> None:
    (staging / _REVISION).unlink()
    write_manifest(staging, manifest)
    staging.rename(dest)


def free_disk_bytes(path: Path) -> int:
    """Free space on the drive that holds ``path`` (which need not exist yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
