"""One file over HTTP: into ``<name>.part``, resumed with a Range request, retried with backoff on
transient errors, checked against the hub's size and checksum, then renamed into place."""

from __future__ import annotations

import functools
import hashlib
import http.client
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from app.downloader.backends import RepoFile
from app.downloader.errors import DownloadError

PART_SUFFIX = ".part"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries in a row without progress before giving up (the first one counts)
    backoff_s: float = 1.0  # the first wait; it doubles after each failure
    max_backoff_s: float = 30.0
    timeout_s: float = 30.0  # to connect, and between two reads
    chunk_bytes: int = 256 * 1024  # at most this much is read between two looks at the stop flag

    def backoff(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row."""
        return min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s)


class Interrupted(Exception):
    """The caller set the stop event (pause or cancel); the partial file is kept."""


class _Retry(Exception):
    """A cause that may go away: a dropped connection, a timeout, a busy server, a bad checksum."""


def part_path(target: Path) -> Path:
    return target.with_name(target.name + PART_SUFFIX)


def fetch_file(file: RepoFile, target: Path, headers: dict[str, str], *, repo: str, stop: threading.Event,
               on_progress: Callable[[int], None], policy: RetryPolicy = RetryPolicy()) -> None:
    """Downloads ``file`` to ``target``; ``on_progress(bytes_on_disk)`` follows every chunk.
    Raises Interrupted when ``stop`` is set and DownloadError when the file cannot be had."""
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _request(file, part, headers, repo, stop, on_progress, policy)
            part.replace(target)
            return
        except _Retry as exc:
            progressed = part.exists() and part.stat().st_size > before
            failures = 1 if progressed else failures + 1
            if failures >= policy.attempts:
                raise DownloadError(repo, f"{file.path}: {exc} (gave up after {failures} attempts)",
                                    transient=True) from exc
            if stop.wait(policy.backoff(failures)):
                raise Interrupted from exc


def _request(file: RepoFile, part: Path, headers: dict[str, str], repo: str, stop: threading.Event,
             on_progress: Callable[[int], None], policy: RetryPolicy) -> None:
    """One GET from the end of the partial file; raises _Retry when the file is not complete and right."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(file.url, headers={**headers, **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = _opener().open(request, timeout=policy.timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have and have == file.size:  # the part is already whole
            return _verify(file, part)
        if exc.code == 416:
            part.unlink()
            raise _Retry("the server refused to resume; starting the file over") from exc
        raise _http_error(exc, file, repo) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retry(_describe(exc)) from exc
    with response:
        if response.status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            part.unlink(missing_ok=True)
            raise _Retry("the server resumed at another offset; starting the file over")
        if response.status != 206:
            have = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        expected_end = have + int(length) if length is not None else file.size
        checksum = _Checksum.of(file)
        if have and checksum:
            checksum.update_from(part)
        on_progress(have)
        with open(part, "ab" if have else "wb") as out:  # a write error (disk full) is not retried
            while chunk := _read(response, policy.chunk_bytes):
                out.write(chunk)
                if checksum:
                    checksum.update(chunk)
                have += len(chunk)
                on_progress(have)
                if stop.is_set():
                    raise Interrupted
    if expected_end is not None and have < expected_end:
        raise _Retry(f"the connection closed after {have} of {expected_end} bytes")
    _verify(file, part, checksum)


def _read(response: http.client.HTTPResponse, size: int) -> bytes:
    """What has arrived, up to ``size`` bytes, without waiting for all of them (so a stop is seen soon)."""
    try:
        return response.read1(size)
    except (OSError, http.client.HTTPException) as exc:
        raise _Retry(_describe(exc)) from exc


def _verify(file: RepoFile, part: Path, checksum: _Checksum | None = None) -> None:
    size = part.stat().st_size
    if file.size is not None and size != file.size:
        part.unlink()
        raise _Retry(f"size mismatch: the hub lists {file.size} bytes, {size} arrived")
    if checksum is None and (checksum := _Checksum.of(file)):
        checksum.update_from(part)
    if checksum and checksum.hexdigest() != checksum.expected:
        part.unlink()
        raise _Retry(f"checksum mismatch: expected {checksum.name} {checksum.expected}, got {checksum.hexdigest()}")


class _Checksum:
    """The hub's checksum of a file: sha256 of an LFS file, or the git blob sha1 of a small one."""

    def __init__(self, name: str, expected: str, digest):
        self.name, self.expected, self.digest = name, expected.lower(), digest

    @classmethod
    def of(cls, file: RepoFile) -> _Checksum | None:
        if file.sha256:
            return cls("sha256", file.sha256, hashlib.sha256())
        if file.git_sha1 and file.size is not None:
            return cls("git-sha1", file.git_sha1, hashlib.sha1(b"blob %d\0" % file.size))
        return None

    def update(self, data: bytes) -> None:
        self.digest.update(data)

    def update_from(self, path: Path) -> None:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                self.digest.update(block)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def _http_error(exc: urllib.error.HTTPError, file: RepoFile, repo: str) -> Exception:
    """401/403/404 and other 4xx are final and get a clear message; 5xx and 429 are worth a retry."""
    detail = exc.headers.get("X-Error-Message") if exc.headers else None
    detail = f" ({detail})" if detail else ""
    if exc.code == 401:
        return DownloadError(repo, f"{file.path}: authentication required (HTTP 401){detail}: the repository is "
                                   "gated or private, set an access token")
    if exc.code == 403:
        return DownloadError(repo, f"{file.path}: access denied (HTTP 403){detail}: accept the repository's terms "
                                   "on the hub with the token's account, or use a token with read access")
    if exc.code == 404:
        return DownloadError(repo, f"{file.path}: not found on the server (HTTP 404){detail}")
    if exc.code == 429 or exc.code >= 500:
        return _Retry(f"the server answered HTTP {exc.code} {exc.reason}")
    return DownloadError(repo, f"{file.path}: the server answered HTTP {exc.code} {exc.reason}{detail}")


def _describe(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "the connection timed out"
    return f"network error: {reason or type(reason).__name__}"


class _NoCredentialsAcrossHosts(urllib.request.HTTPRedirectHandler):
    """The hub redirects large files to a storage host with a signed URL: credentials stay behind."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            for name in ("Authorization", "Cookie"):
                new.remove_header(name)
        return new


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    context = ssl.create_default_context()
    try:  # where the system has no CA bundle Python can find (macOS framework builds, frozen apps)
        import certifi

        context.load_verify_locations(certifi.where())
    except ImportError:
        pass
    return urllib.request.build_opener(_NoCredentialsAcrossHosts(), urllib.request.HTTPSHandler(context=context))
