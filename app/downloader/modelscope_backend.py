"""ModelScope (or a mirror of it) through ``modelscope_hub``, the official client that the ``modelscope``
package delegates to. It is imported directly because ``import modelscope`` also imports torch."""

from __future__ import annotations

from app import __version__
from app.downloader.backends import RepoFile, RepoListing, SearchResult
from app.downloader.errors import DownloadError

class ModelScopeBackend:
    source = "modelscope"

    def __init__(self, endpoint: str | None = None, token: str | None = None):
        from modelscope_hub import HubApi, HubConfig  # imported on first use: most people only use the HF hub

        self.config = HubConfig(endpoint=endpoint, token=token)  # None: the env / saved login decide
        self.endpoint = self.config.endpoint
        self.api = HubApi(self.config, user_agent={"lmstation": __version__})

    def list_files(self, repo: str, revision: str | None = None) -> RepoListing:
        revision = revision or "master"
        try:
            entries = self.api.list_repo_files(repo, "model", revision=revision, recursive=True)
        except Exception as exc:  # translate the client's errors into one clear message
            raise _translate(exc, repo, self.endpoint) from exc
        files = tuple(
            RepoFile(path=f.path, size=f.size or None, sha256=f.sha256,
                     url=self.api.legacy.get_download_url(repo, "model", f.path, revision))
            for f in entries if not f.is_dir
        )
        return RepoListing(repo, revision, files)

    def headers(self) -> dict[str, str]:
        """The legacy file endpoint reads the token from the ``m_session_id`` cookie, newer ones from
        the bearer header; the client sends both, and so does this."""
        headers = {"User-Agent": f"lmstation/{__version__}"}
        if self.config.token:
            headers |= {"Authorization": f"Bearer {self.config.token}", "Cookie": f"m_session_id={self.config.token}"}
        return headers

    def search(self, query: str, *, task: str | None = None, library: str | None = None,
               limit: int = 20) -> list[SearchResult]:
        try:
            page = self.api.list_repos("model", search=query or None, sort="downloads", page_size=limit,
                                       task=task, library=library)
        except Exception as exc:
            raise _translate(exc, f"search {query!r}", self.endpoint) from exc
        return [SearchResult(f"{r.owner}/{r.name}" if r.owner and r.name else str(r.id),
                             (r.tasks or [None])[0], library, r.downloads, r.likes) for r in page.items]


def _translate(exc: Exception, repo: str, endpoint: str) -> DownloadError:
    from modelscope_hub import (
        AuthenticationError,
        HubError,
        NetworkError,
        NotExistError,
        NotFoundError,
        PermissionDeniedError,
    )

    if isinstance(exc, (NotFoundError, NotExistError)):
        return DownloadError(repo, f"repository or revision not found on {endpoint} (if it is private, set an "
                                   "access token)")
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return DownloadError(repo, f"access denied by {endpoint}: check the access token ({exc})")
    if isinstance(exc, NetworkError):
        return DownloadError(repo, f"cannot reach {endpoint}: {exc}", transient=True)
    if isinstance(exc, HubError):
        return DownloadError(repo, f"hub error from {endpoint}: {exc}", transient=exc.retryable)
    if isinstance(exc, ValueError):
        return DownloadError(repo, f"invalid request: {exc}")
    return DownloadError(repo, f"cannot reach {endpoint}: {exc}", transient=True)
