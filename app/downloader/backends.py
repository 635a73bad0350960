"""What a hub backend provides: a pinned file listing with sizes and checksums, download URLs,
auth headers and search. Each backend wraps a hub's official client; none speaks the protocol itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SOURCES = ("hf", "modelscope")


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative to the repository root, "/"-separated
    size: int | None  # bytes, when the hub reports it
    url: str  # at the pinned revision
    sha256: str | None = None  # LFS files on HF; files listed by ModelScope
    git_sha1: str | None = None  # the git blob id of a small (non-LFS) file on HF


@dataclass(frozen=True)
class RepoListing:
    repo: str
    revision: str  # the commit the URLs are pinned to (or the branch, if the hub gives no commit)
    files: tuple[RepoFile, ...]


@dataclass(frozen=True)
class SearchResult:
    repo: str
    task: str | None = None
    library: str | None = None
    downloads: int | None = None
    likes: int | None = None


class Backend(Protocol):
    source: str
    endpoint: str

    def list_files(self, repo: str, revision: str | None = None) -> RepoListing: ...

    def headers(self) -> dict[str, str]:
        """HTTP headers for file requests (user agent, and the token when there is one)."""
        ...

    def search(self, query: str, *, task: str | None = None, library: str | None = None,
               limit: int = 20) -> list[SearchResult]: ...


def make_backend(source: str = "hf", endpoint: str | None = None, token: str | None = None) -> Backend:
    """source: "hf" or "modelscope"; endpoint: a mirror's base URL (None: the client's default,
    which honours HF_ENDPOINT / MODELSCOPE_ENDPOINT); token: None lets the client find its own login."""
    if source == "hf":
        from app.downloader.hf_backend import HfBackend

        return HfBackend(endpoint, token)
    if source == "modelscope":
        from app.downloader.modelscope_backend import ModelScopeBackend

        return ModelScopeBackend(endpoint, token)
    raise ValueError(f"unknown source {source!r}: use one of {', '.join(SOURCES)}")
