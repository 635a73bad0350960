"""The download queue: one worker thread takes jobs in order, lists each repository through its hub's
client, picks the files, checks the disk, fetches file by file and reports progress. Jobs can be paused
(partial files kept), resumed (from those files), cancelled (partial files removed) and retried."""

from __future__ import annotations

import itertools
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.downloader.backends import SOURCES, Backend, RepoFile, RepoListing, make_backend
from app.downloader.errors import DownloadError
from app.downloader.folders import (
    default_dest,
    finish,
    free_disk_bytes,
    prepare_staging,
    read_manifest,
    staging_dir,
    staging_matches,
)
from app.downloader.progress import DownloadSnapshot, FileProgress, JobState, SpeedMeter, human_bytes
from app.downloader.selection import FileChoice, select_files, weight_format
from app.downloader.tokens import TokenStore
from app.downloader.transfer import Interrupted, RetryPolicy, fetch_file, part_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadRequest:
    repo: str  # "org/name"
    source: str = "hf"  # "hf" | "modelscope"
    revision: str | None = None  # branch, tag or commit; None: the default branch
    endpoint: str | None = None  # a mirror's base URL; None: the client's default
    token: str | None = None  # None: the stored token, else the client's own login; "": anonymous
    dest: Path | None = None  # None: the library folder, models_dir()/org--name
    choice: FileChoice = field(default_factory=FileChoice)


@dataclass(frozen=True)
class ManagerConfig:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    free_bytes: Callable[[Path], int] = free_disk_bytes  # free space where a folder will go
    reserve_bytes: int = 100_000_000  # left free after a download
    progress_interval_s: float = 0.25  # the least time between two progress reports of a job
    tokens: TokenStore | None = None  # None: TokenStore() (the keyring, or a file in the data folder)


@dataclass
class _FileRow:
    size: int | None
    done: int = 0
    complete: bool = False


class DownloadJob:
    """A handle on one download. Its methods may be called from any thread."""

    def __init__(self, job_id: int, request: DownloadRequest, dest: Path, manager: DownloadManager):
        self.id, self.request, self.dest = job_id, request, dest
        self._manager = manager
        self._state = JobState.QUEUED
        self._want: JobState | None = None  # PAUSED or CANCELLED, asked for while running
        self._stop = threading.Event()
        self._settled = threading.Event()  # set while paused or finished
        self._rows: dict[str, _FileRow] = {}
        self._current: str | None = None
        self._revision = request.revision
        self._error: str | None = None
        self._meter = SpeedMeter()
        self._last_report = 0.0

    @property
    def state(self) -> JobState:
        return self._state

    def pause(self) -> None:
        self._manager._pause(self)

    def resume(self) -> None:
        """Queues a paused or failed job again; it continues from the files already on disk."""
        self._manager._resume(self)

    def cancel(self) -> None:
        self._manager._cancel(self)

    def wait(self, timeout: float | None = None) -> DownloadSnapshot:
        """Blocks until the job is paused or finished (or ``timeout`` passes); returns where it stands."""
        self._settled.wait(timeout)
        return self.snapshot()

    def snapshot(self) -> DownloadSnapshot:
        with self._manager._lock:
            files = tuple(FileProgress(p, r.size, r.done, r.complete) for p, r in self._rows.items())
            done = sum(f.done for f in files)
            total = sum(f.size or 0 for f in files)
            running = self._state is JobState.RUNNING
            return DownloadSnapshot(
                job_id=self.id, repo=self.request.repo, source=self.request.source, dest=self.dest,
                state=self._state, revision=self._revision, files=files,
                current_file=self._current if running else None, done_bytes=done, total_bytes=total,
                speed_bps=self._meter.speed() if running else 0.0,
                eta_s=self._meter.eta(max(total - done, 0)) if running else None, error=self._error,
            )


class DownloadManager:
    """``on_progress(snapshot)`` is called from the worker thread, at most every ``progress_interval_s``
    per job and at every change of state; a pause or cancel of a job that is not running reports from
    the caller's thread."""

    def __init__(self, config: ManagerConfig | None = None,
                 on_progress: Callable[[DownloadSnapshot], None] | None = None):
        self.config = config or ManagerConfig()
        self.on_progress = on_progress
        self.tokens = self.config.tokens or TokenStore()
        self._lock = threading.RLock()
        self._queue: queue.Queue[DownloadJob | None] = queue.Queue()
        self._jobs: dict[int, DownloadJob] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="lmstation-downloads", daemon=True)
        self._worker.start()

    def add(self, request: DownloadRequest) -> DownloadJob:
        if request.source not in SOURCES:
            raise ValueError(f"unknown source {request.source!r}: use one of {', '.join(SOURCES)}")
        with self._lock:
            job = DownloadJob(next(self._ids), request, request.dest or default_dest(request.repo), self)
            self._jobs[job.id] = job
            self._queue.put(job)
        self._report(job)
        return job

    def job(self, job_id: int) -> DownloadJob:
        return self._jobs[job_id]

    def jobs(self) -> list[DownloadJob]:
        with self._lock:
            return list(self._jobs.values())

    def close(self, timeout: float | None = None) -> None:
        """Pauses the running job (its partial files stay for next time) and stops the worker."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                if job._state is JobState.RUNNING:
                    job._want = JobState.PAUSED
                    job._stop.set()
            self._queue.put(None)
        self._worker.join(timeout)

    def __enter__(self) -> DownloadManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- job control (through DownloadJob) --------------------------------------------------------

    def _pause(self, job: DownloadJob) -> None:
        with self._lock:
            if job._state is JobState.QUEUED:
                self._settle(job, JobState.PAUSED)
            elif job._state is JobState.RUNNING:
                job._want = JobState.PAUSED
                job._stop.set()
                return
            else:
                return
        self._report(job)

    def _resume(self, job: DownloadJob) -> None:
        with self._lock:
            if job._state is JobState.RUNNING and job._want is JobState.PAUSED:
                job._want = None  # changed its mind before the worker stopped
                job._stop.clear()
                return
            if job._state not in (JobState.PAUSED, JobState.FAILED):
                return
            job._error = None
            job._state = JobState.QUEUED
            job._settled.clear()
            self._queue.put(job)
        self._report(job)

    def _cancel(self, job: DownloadJob) -> None:
        with self._lock:
            if job._state is JobState.RUNNING:
                job._want = JobState.CANCELLED
                job._stop.set()
                return
            if job._state in (JobState.DONE, JobState.CANCELLED):
                return
            shutil.rmtree(staging_dir(job.dest), ignore_errors=True)
            self._settle(job, JobState.CANCELLED)
        self._report(job)

    def _settle(self, job: DownloadJob, state: JobState, error: str | None = None) -> None:
        job._state, job._error, job._current = state, error, None
        job._settled.set()

    # -- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                if job._state is not JobState.QUEUED or self._closed:
                    continue
                job._state, job._want = JobState.RUNNING, None
                job._stop.clear()
                job._meter.reset()
            self._report(job)
            error: str | None = None
            try:
                self._run(job)
                outcome = JobState.DONE
            except Interrupted:
                outcome = None
            except DownloadError as exc:
                outcome, error = JobState.FAILED, str(exc)
            except Exception as exc:  # a full disk, a permission problem: the job fails, the worker lives on
                log.exception("download of %s failed", job.request.repo)
                outcome, error = JobState.FAILED, f"{job.request.repo}: {exc}"
            with self._lock:
                want = job._want
                if want is JobState.CANCELLED and outcome is not JobState.DONE:
                    shutil.rmtree(staging_dir(job.dest), ignore_errors=True)
                    self._settle(job, JobState.CANCELLED)
                elif outcome is None and want is None:  # a pause was taken back: carry on
                    job._state = JobState.QUEUED
                    self._queue.put(job)
                else:
                    self._settle(job, outcome or JobState.PAUSED, error)
            self._report(job)

    def _run(self, job: DownloadJob) -> None:
        request = job.request
        token = request.token if request.token is not None else self.tokens.get(request.source)
        backend = make_backend(request.source, request.endpoint, token)
        listing = self._list(backend, job)
        files = select_files(listing.files, request.choice)
        if not request.choice.everything and not any(weight_format(f.path) for f in files):
            formats = sorted({fmt for f in listing.files if (fmt := weight_format(f.path))})
            raise DownloadError(request.repo, "no safetensors, .bin or .gguf weights in the repository"
                                + (f" (it has: {', '.join(formats)}; ask for those formats)" if formats else ""))
        manifest = {"repo": request.repo, "source": request.source, "revision": listing.revision,
                    "endpoint": backend.endpoint, "files": [f.path for f in files]}
        if self._already_there(job, files):
            return
        staging = staging_dir(job.dest)
        key = f"{request.source}:{request.repo}@{listing.revision}"
        present = _bytes_present(staging, key, files)
        self._check_space(job, files, present)
        prepare_staging(staging, key)
        with self._lock:
            job._revision = listing.revision
            job._rows = {f.path: _FileRow(f.size, present.get(f.path, 0)) for f in files}
        headers = backend.headers()
        for file in files:
            target = _inside(staging, file, request.repo)
            if not (target.is_file() and file.size in (None, target.stat().st_size)):
                with self._lock:
                    job._current = file.path
                fetch_file(file, target, headers, repo=request.repo, stop=job._stop, policy=self.config.retry,
                           on_progress=lambda done, path=file.path: self._progress(job, path, done))
            with self._lock:
                row = job._rows[file.path]
                row.done, row.complete = target.stat().st_size, True
            self._report(job)
        finish(staging, job.dest, manifest)

    def _list(self, backend: Backend, job: DownloadJob) -> RepoListing:
        """The listing, retried with backoff while the cause is transient."""
        failures = 0
        while True:
            try:
                return backend.list_files(job.request.repo, job.request.revision)
            except DownloadError as exc:
                failures += 1
                if not exc.transient or failures >= self.config.retry.attempts:
                    raise
                if job._stop.wait(self.config.retry.backoff(failures)):
                    raise Interrupted from exc

    def _already_there(self, job: DownloadJob, files: list[RepoFile]) -> bool:
        """True for a finished download of the same repository at ``dest``; an unrelated folder is refused."""
        if not job.dest.exists():
            return False
        manifest = read_manifest(job.dest)
        if manifest is None or (manifest.get("repo"), manifest.get("source")) != (job.request.repo,
                                                                                 job.request.source):
            raise DownloadError(job.request.repo, f"{job.dest} already exists and is not a download of it: "
                                                  "choose another folder or remove that one")
        with self._lock:
            job._revision = manifest.get("revision")
            job._rows = {f.path: _FileRow(f.size, f.size or 0, True) for f in files}
        return True

    def _check_space(self, job: DownloadJob, files: list[RepoFile], present: dict[str, int]) -> None:
        """Refuses before any byte is written when the drive cannot take the rest of the download."""
        needed = sum(max((f.size or 0) - present.get(f.path, 0), 0) for f in files)
        free = self.config.free_bytes(job.dest.parent)
        if needed + self.config.reserve_bytes > free:
            raise DownloadError(job.request.repo, f"not enough disk space in {job.dest.parent}: the download needs "
                                                  f"{human_bytes(needed)} more, {human_bytes(free)} is free")

    def _progress(self, job: DownloadJob, path: str, done: int) -> None:
        now = time.monotonic()
        with self._lock:
            job._rows[path].done = done
            job._meter.add(sum(r.done for r in job._rows.values()))
            due = now - job._last_report >= self.config.progress_interval_s
        if due:
            self._report(job)

    def _report(self, job: DownloadJob) -> None:
        job._last_report = time.monotonic()
        if self.on_progress is not None:
            try:
                self.on_progress(job.snapshot())
            except Exception:  # a broken listener must not stop the downloads
                log.exception("download progress callback failed")


def _bytes_present(staging: Path, key: str, files: list[RepoFile]) -> dict[str, int]:
    """Bytes already on disk per file from an earlier attempt at the same revision."""
    if not staging_matches(staging, key):
        return {}
    present = {}
    for f in files:
        for path in (staging / f.path, part_path(staging / f.path)):
            if path.is_file():
                present[f.path] = path.stat().st_size
                break
    return present


def _inside(staging: Path, file: RepoFile, repo: str) -> Path:
    """The file's place in the staging folder; a path that would leave it is refused."""
    target = (staging / file.path).resolve()
    if not target.is_relative_to(staging.resolve()):
        raise DownloadError(repo, f"refusing the file path {file.path!r}: it points outside the model folder")
    return target
