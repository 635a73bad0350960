"""The Downloads tab: one row per download with its progress bar, speed and time left, and
Pause/Resume, Cancel, and Load once it is done.

The DownloadManager works on its own thread and reports snapshots (frozen plain values) from
there; a signal queues them to the GUI thread, so downloads go on while the user chats.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget

from app.downloader import DownloadManager, DownloadRequest, DownloadSnapshot, JobState, ManagerConfig, human_bytes


class Downloads(QObject):
    """Owns the DownloadManager; ``progress`` carries its snapshots to the GUI thread."""

    progress = Signal(object)  # DownloadSnapshot

    def __init__(self, config: ManagerConfig | None = None):
        super().__init__()
        self.manager = DownloadManager(config, on_progress=self.progress.emit)

    def start(self, request: DownloadRequest) -> int:
        return self.manager.add(request).id  # the manager reports the queued job at once

    def close(self) -> None:
        """Pauses what is running; its partial files stay for the next time."""
        self.manager.close(timeout=10)


def _describe(s: DownloadSnapshot) -> str:
    if s.state is JobState.FAILED:
        return f"Failed: {s.error}"
    if s.state is JobState.DONE:
        return f"Done · {human_bytes(s.total_bytes)} in {s.dest}"
    sizes = f"{human_bytes(s.done_bytes)} of {human_bytes(s.total_bytes)}" if s.total_bytes else "Listing files…"
    if s.state is JobState.RUNNING and s.speed_bps > 0:
        left = f" · {s.eta_s:.0f} s left" if s.eta_s is not None else ""
        return f"{sizes} · {human_bytes(s.speed_bps)}/s{left}"
    return {JobState.QUEUED: f"Waiting · {sizes}", JobState.PAUSED: f"Paused · {sizes}",
            JobState.CANCELLED: "Cancelled; its partial files were removed"}.get(s.state, sizes)


class DownloadRow(QFrame):
    def __init__(self, snapshot: DownloadSnapshot, downloads: Downloads, on_load):
        super().__init__(objectName="assistantBubble")
        self.job = downloads.manager.job(snapshot.job_id)
        self.snapshot = snapshot
        self.name = QLabel(f"<b>{snapshot.repo}</b> <span>({'Hugging Face' if snapshot.source == 'hf' else 'ModelScope'})</span>")
        self.status = QLabel("", objectName="muted", wordWrap=True)
        self.bar = QProgressBar(minimum=0, maximum=1000, textVisible=False)
        self.pause_button = QPushButton("Pause")
        self.cancel_button = QPushButton("Cancel")
        self.load_button = QPushButton("Load")
        self.pause_button.clicked.connect(self._pause_or_resume)
        self.cancel_button.clicked.connect(self.job.cancel)
        self.load_button.clicked.connect(lambda: on_load(str(self.snapshot.dest)))
        layout = QGridLayout(self)
        layout.addWidget(self.name, 0, 0)
        layout.addWidget(self.status, 1, 0)
        layout.addWidget(self.bar, 2, 0)
        layout.addWidget(self.pause_button, 2, 1)
        layout.addWidget(self.cancel_button, 2, 2)
        layout.addWidget(self.load_button, 2, 3)
        layout.setColumnStretch(0, 1)
        self.show_snapshot(snapshot)

    def _pause_or_resume(self) -> None:
        if self.snapshot.state in (JobState.PAUSED, JobState.FAILED):
            self.job.resume()
        else:
            self.job.pause()

    def show_snapshot(self, s: DownloadSnapshot) -> None:
        self.snapshot = s
        if s.fraction is not None:
            self.bar.setValue(round(1000 * s.fraction))
        self.status.setText(_describe(s))
        self.pause_button.setText("Retry" if s.state is JobState.FAILED else
                                  "Resume" if s.state is JobState.PAUSED else "Pause")
        self.pause_button.setVisible(s.state not in (JobState.DONE, JobState.CANCELLED))
        self.cancel_button.setVisible(not s.state.finished or s.state is JobState.FAILED)
        self.load_button.setVisible(s.state is JobState.DONE)


class DownloadsPanel(QWidget):
    load_requested = Signal(str)  # a finished download's folder
    finished = Signal(object)  # the snapshot of a download that just ended (done, failed or cancelled)

    def __init__(self, downloads: Downloads):
        super().__init__()
        self.downloads = downloads
        self.rows: dict[int, DownloadRow] = {}
        self.empty = QLabel("No downloads yet. Pick a model under Discover and press Download.", objectName="muted")
        self.column = QVBoxLayout()
        self.column.addWidget(self.empty)
        self.column.addStretch(1)
        holder = QWidget()
        holder.setLayout(self.column)
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        scroll.setWidget(holder)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        downloads.progress.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _on_progress(self, snapshot: DownloadSnapshot) -> None:
        row = self.rows.get(snapshot.job_id)
        if row is None:
            row = self.rows[snapshot.job_id] = DownloadRow(snapshot, self.downloads, self.load_requested.emit)
            self.column.insertWidget(0, row)  # the newest on top
            self.empty.hide()
        elif row.snapshot.state in (JobState.DONE, JobState.CANCELLED):
            return  # final; a report from another thread that was overtaken changes nothing
        row.show_snapshot(snapshot)
        if snapshot.state.finished:
            self.finished.emit(snapshot)
