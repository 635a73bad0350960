"""The one error the downloader raises: it always names the repository and the cause."""

from __future__ import annotations


class DownloadError(Exception):
    """``transient``: the cause may go away on its own (network, server busy), so a retry makes sense."""

    def __init__(self, repo: str, cause: str, transient: bool = False):
        super().__init__(f"{repo}: {cause}")
        self.repo = repo
        self.cause = cause
        self.transient = transient
