"""The Server page: start and stop the OpenAI-compatible server on the loaded model, its address
and key, a live log of the requests it served, and examples to copy that work as shown.

The page only talks to the bridge (plain dicts); the server runs beside the engine, in the
bridge's thread's care, and shares the chat's model."""

from __future__ import annotations

import json
import secrets
import time

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QApplication, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

LOG_COLUMNS = ("Time", "Client", "Endpoint", "Prompt", "Reply", "tok/s", "Status")
LOG_ROWS = 500  # the newest requests kept on screen


class ServerPage(QWidget):
    start_requested = Signal(dict)  # ServerConfig fields
    stop_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.running, self.url, self.model = False, "", ""
        self.host = QLineEdit("127.0.0.1")
        self.host.setToolTip("127.0.0.1: this computer only. 0.0.0.0: your network too (an API key is then required).")
        self.port = QSpinBox(minimum=1, maximum=65535, value=23333)
        self.api_key = QLineEdit(placeholderText="none (only on 127.0.0.1)")
        generate = QPushButton("Generate", clicked=lambda: self.api_key.setText(f"sk-local-{secrets.token_hex(16)}"))
        key_row = QHBoxLayout()
        key_row.addWidget(self.api_key, 1)
        key_row.addWidget(generate)
        self.toggle = QPushButton("Start server", clicked=self._toggle)
        self.status = QLabel("Stopped", wordWrap=True)
        self.model_label = QLabel("No model loaded", objectName="muted")
        form = QFormLayout()
        form.addRow("Address", self.host)
        form.addRow("Port", self.port)
        form.addRow("API key", key_row)

        self.log = QTableWidget(0, len(LOG_COLUMNS))
        self.log.setHorizontalHeaderLabels(LOG_COLUMNS)
        self.log.verticalHeader().setVisible(False)
        self.log.horizontalHeader().setStretchLastSection(True)
        self.log.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)

        self.curl, self.python = (QPlainTextEdit(readOnly=True) for _ in range(2))
        examples = QHBoxLayout()
        for title, box in (("curl", self.curl), ("Python (openai)", self.python)):
            column = QVBoxLayout()
            row = QHBoxLayout()
            row.addWidget(QLabel(f"<b>{title}</b>"))
            row.addStretch(1)
            row.addWidget(QPushButton("Copy", clicked=lambda _=False, b=box: QApplication.clipboard().setText(
                b.toPlainText())))
            column.addLayout(row)
            column.addWidget(box)
            examples.addLayout(column)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2>OpenAI-compatible server</h2>"))
        layout.addWidget(QLabel("Other programs use the model loaded here, batched with your chats: no second copy "
                                "in memory.", wordWrap=True))
        layout.addLayout(form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.toggle)
        buttons.addWidget(self.status, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.model_label)
        layout.addLayout(examples, 1)
        layout.addWidget(QLabel("<b>Requests</b>"))
        layout.addWidget(self.log, 2)
        for field in (self.host, self.api_key):
            field.textChanged.connect(self._refresh_examples)
        self.port.valueChanged.connect(self._refresh_examples)
        self._refresh_examples()

    # ---- from the window --------------------------------------------------------------------------
    def set_model(self, name: str) -> None:
        self.model = name
        self.model_label.setText(f"Loaded model: {name} (what the server serves)" if name else "No model loaded")
        self._refresh_examples()

    @Slot(dict)
    def on_state(self, state: dict) -> None:
        self.running, self.url = state["running"], state.get("url", "")
        self.toggle.setText("Stop server" if self.running else "Start server")
        for field in (self.host, self.port, self.api_key):
            field.setEnabled(not self.running)
        if state.get("error"):
            self.status.setText(f"Could not start: {state['error']}")
        else:
            self.status.setText(f"Running at {self.url}" if self.running else "Stopped")
        self._refresh_examples()

    @Slot(dict)
    def on_request(self, record: dict) -> None:
        if self.log.rowCount() >= LOG_ROWS:
            self.log.removeRow(self.log.rowCount() - 1)
        self.log.insertRow(0)
        speed = record.get("tokens_per_s")
        status = record["status"]
        cells = (time.strftime("%H:%M:%S", time.localtime(record["time"])), record["client"], record["endpoint"],
                 str(record["prompt_tokens"]), str(record["completion_tokens"]),
                 f"{speed:.1f}" if speed else "", str(status) if status != 499 else "client left")
        for column, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if record.get("error"):
                item.setToolTip(record["error"])
            self.log.setItem(0, column, item)

    # ---- internals ---------------------------------------------------------------------------------
    def _toggle(self) -> None:
        if self.running:
            self.stop_requested.emit()
            return
        self.status.setText("Starting…")
        self.start_requested.emit({"host": self.host.text().strip(), "port": self.port.value(),
                                   "api_key": self.api_key.text().strip() or None})

    def _refresh_examples(self) -> None:
        host = self.host.text().strip() or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # on this computer; from another one, this computer's address
        url = self.url or f"http://{host}:{self.port.value()}/v1"
        key = self.api_key.text().strip() or "not-needed"
        model = self.model or "MODEL"
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                           "temperature": 0, "max_tokens": 128})
        self.curl.setPlainText(f"curl {url}/chat/completions \\\n  -H 'Content-Type: application/json' \\\n"
                               f"  -H 'Authorization: Bearer {key}' \\\n  -d '{body}'")
        self.python.setPlainText(
            "from openai import OpenAI\n\n"
            f"client = OpenAI(base_url={url!r}, api_key={key!r})\n"
            "stream = client.chat.completions.create(\n"
            f"    model={model!r},\n"
            "    messages=[{'role': 'user', 'content': 'What is the capital of France?'}],\n"
            "    temperature=0,\n"
            "    max_tokens=128,\n"
            "    stream=True,\n)\n"
            "for chunk in stream:\n"
            "    print(chunk.choices[0].delta.content or '', end='', flush=True)\n")
