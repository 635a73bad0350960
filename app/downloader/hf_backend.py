"""Hugging Face Hub (or an HF-compatible mirror) through ``huggingface_hub``'s public API."""

from __future__ import annotations

from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from app import __version__
from app.downloader.backends import RepoFile, RepoListing, SearchResult
from app.downloader.errors import DownloadError


class HfBackend:
    source = "hf"

    def __init__(self, endpoint: str | None = None, token: str | None = None):
        self.endpoint = (endpoint or hf_constants.ENDPOINT).rstrip("/")
        self.token: str | bool | None = False if token == "" else token  # False: send no token at all
        self.api = HfApi(endpoint=self.endpoint, token=self.token, library_name="lmstation",
                         library_version=__version__)

    def list_files(self, repo: str, revision: str | None = None) -> RepoListing:
        try:
            info = self.api.model_info(repo, revision=revision, files_metadata=True)
        except Exception as exc:  # the client's errors differ across versions: translate them all here
            raise _translate(exc, repo, revision, self.endpoint) from exc
        commit = info.sha or revision or "main"
        files = tuple(
            RepoFile(
                path=s.rfilename,
                size=s.size,
                url=hf_hub_url(repo, s.rfilename, revision=commit, endpoint=self.endpoint),
                sha256=s.lfs["sha256"] if s.lfs else None,
                git_sha1=None if s.lfs else s.blob_id,
            )
            for s in info.siblings or ()
        )
        return RepoListing(repo, commit, files)

    def headers(self) -> dict[str, str]:
        return build_hf_headers(token=self.token, library_name="lmstation", library_version=__version__)

    def search(self, query: str, *, task: str | None = None, library: str | None = None,
               limit: int = 20) -> list[SearchResult]:
        try:
            models = self.api.list_models(search=query or None, pipeline_tag=task, filter=library,
                                          sort="downloads", limit=limit)
            return [SearchResult(m.id, m.pipeline_tag, m.library_name, m.downloads, m.likes) for m in models]
        except Exception as exc:
            raise _translate(exc, f"search {query!r}", None, self.endpoint) from exc


def _translate(exc: Exception, repo: str, revision: str | None, endpoint: str) -> DownloadError:
    if isinstance(exc, GatedRepoError):
        return DownloadError(repo, "the repository is gated: accept its terms on the hub page, then set an "
                                   "access token of that account")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(repo, f"repository not found on {endpoint} (if it is private or gated, set an "
                                   "access token)")
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(repo, f"revision {revision!r} not found")
    if isinstance(exc, OfflineModeIsEnabled):
        return DownloadError(repo, "offline mode is on (HF_HUB_OFFLINE is set)")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            return DownloadError(repo, f"access denied by {endpoint} (HTTP {status}): check the access token")
        return DownloadError(repo, f"hub error from {endpoint}: {exc}", transient=status is None or status >= 500
                             or status == 429)
    if isinstance(exc, ValueError):  # the client validates ids and revisions before any request
        return DownloadError(repo, f"invalid request: {exc}")
    return DownloadError(repo, f"cannot reach {endpoint}: {exc}", transient=True)
