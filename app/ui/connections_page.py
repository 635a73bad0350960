"""Settings → Connections: remote OpenAI-compatible endpoints (another LM Station, a cluster, vLLM
or LMDeploy servers, a provider), each with a name, an address and an API key. Their models join
the chat's model picker, marked remote.

Save stores the endpoint (the key where the hub tokens go) and lists its models; Test lists them
without saving. Both run on worker threads and say here what they found, or what went wrong.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QMessageBox, QPushButton, QVBoxLayout,
    QWidget,
)

from app.remote import Endpoint, check_url, new_endpoint_id
from app.ui.remote_models import RemoteModels


class ConnectionsPage(QWidget):
    def __init__(self, remote: RemoteModels):
        super().__init__()
        self.remote = remote
        self._ticket = 0  # the listing whose answer this page waits for
        self.endpoint_list = QListWidget(maximumWidth=240)
        self.name = QLineEdit(placeholderText="A name to know it by, e.g. Lab server")
        self.url = QLineEdit(placeholderText="http://127.0.0.1:23333/v1")
        self.key = QLineEdit(echoMode=QLineEdit.EchoMode.Password, placeholderText="Only if the server asks for one")
        self.new_button = QPushButton("New")
        self.remove_button = QPushButton("Remove…")
        self.test_button = QPushButton("Test")
        self.save_button = QPushButton("Save", objectName="primary")
        self.result = QLabel("", objectName="muted", wordWrap=True)
        self.problem = QLabel("", objectName="notice", wordWrap=True)
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Address", self.url)
        form.addRow("API key", self.key)
        buttons = QHBoxLayout()
        buttons.addWidget(self.test_button)
        buttons.addStretch(1)
        for button in (self.remove_button, self.new_button, self.save_button):
            buttons.addWidget(button)
        editor = QVBoxLayout()
        editor.addLayout(form)
        editor.addLayout(buttons)
        editor.addWidget(self.result)
        editor.addWidget(self.problem)
        editor.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.endpoint_list)
        row.addLayout(editor, 1)
        column = QWidget(maximumWidth=760)
        inner = QVBoxLayout(column)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addWidget(QLabel("<h2>Connections</h2>"))
        inner.addWidget(QLabel("OpenAI-compatible servers to chat with: another LM Station, a cluster, vLLM or "
                               "LMDeploy, or a provider. Their models appear in the chat's model list, marked "
                               "(remote). Keys are kept like the hub access tokens: in the system keyring where "
                               "there is one, else in a file only you can read.", objectName="muted", wordWrap=True))
        inner.addLayout(row, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(column, 1)

        self.endpoint_list.currentItemChanged.connect(self._on_select)
        self.new_button.clicked.connect(self.start_new)
        self.save_button.clicked.connect(self.save)
        self.test_button.clicked.connect(self.test)
        self.remove_button.clicked.connect(self.remove)
        remote.listed.connect(self._on_listed)
        remote.changed.connect(self._refresh_list)
        self._refresh_list()
        self.start_new()

    def selected_id(self) -> str | None:
        item = self.endpoint_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _refresh_list(self) -> None:
        current = self.selected_id()
        self.endpoint_list.blockSignals(True)
        self.endpoint_list.clear()
        for endpoint in self.remote.endpoints:
            item = QListWidgetItem(endpoint.name)
            item.setData(Qt.ItemDataRole.UserRole, endpoint.id)
            item.setToolTip(endpoint.api_base)
            self.endpoint_list.addItem(item)
            if endpoint.id == current:
                self.endpoint_list.setCurrentItem(item)
        self.endpoint_list.blockSignals(False)
        self.remove_button.setEnabled(self.selected_id() is not None)

    def _on_select(self, item: QListWidgetItem | None) -> None:
        endpoint = self.remote.endpoint(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None
        if endpoint is None:
            return
        self.name.setText(endpoint.name)
        self.url.setText(endpoint.url)
        self.key.setText(endpoint.key)
        served = ", ".join(endpoint.models) or "none yet"
        self._show(f"Models it served when last asked: {served}.", "")
        self.remove_button.setEnabled(True)

    def start_new(self) -> None:
        """An empty form: Save adds a new endpoint."""
        self.endpoint_list.setCurrentItem(None)
        for field in (self.name, self.url, self.key):
            field.clear()
        self._show("", "")
        self.remove_button.setEnabled(False)
        self.name.setFocus()

    def _form(self) -> Endpoint | None:
        """The endpoint as the form describes it, or None after saying what is missing."""
        name = self.name.text().strip()
        if not name:
            self._show("", "Give the endpoint a name.")
            return None
        try:
            url = check_url(self.url.text())
        except ValueError as exc:
            self._show("", str(exc))
            return None
        return Endpoint(self.selected_id() or new_endpoint_id(), name, url, self.key.text().strip())

    def save(self) -> None:
        endpoint = self._form()
        if endpoint is None:
            return
        self._ticket = self.remote.save(endpoint)
        self._select(endpoint.id)
        self._show(f"Saved. Asking {endpoint.name} for its models…", "")

    def test(self) -> None:
        endpoint = self._form()
        if endpoint is not None:
            self._ticket = self.remote.list_models(endpoint)
            self._show(f"Asking {endpoint.name} for its models…", "")

    def remove(self) -> None:
        endpoint = self.remote.endpoint(self.selected_id() or "")
        if endpoint is None:
            return
        question = f"Remove {endpoint.name} and forget its API key? Chats with its models stay."
        if QMessageBox.question(self, "Remove connection", question) == QMessageBox.StandardButton.Yes:
            self.remote.remove(endpoint.id)
            self.start_new()
            self._show(f"Removed {endpoint.name}.", "")

    def _select(self, endpoint_id: str) -> None:
        for row in range(self.endpoint_list.count()):
            if self.endpoint_list.item(row).data(Qt.ItemDataRole.UserRole) == endpoint_id:
                self.endpoint_list.blockSignals(True)
                self.endpoint_list.setCurrentRow(row)
                self.endpoint_list.blockSignals(False)
        self.remove_button.setEnabled(True)

    @Slot(int, list, str)
    def _on_listed(self, ticket: int, models: list, error: str) -> None:
        if ticket != self._ticket:
            return  # an older question, or the window's own refresh
        if error:
            self._show("", error)
        elif models:
            self._show(f"Connected: {len(models)} model{'s' if len(models) != 1 else ''} — {', '.join(models)}.", "")
        else:
            self._show("Connected, but it serves no model right now.", "")

    def _show(self, result: str, problem: str) -> None:
        self.result.setText(result)
        self.result.setVisible(bool(result))
        self.problem.setText(problem)
        self.problem.setVisible(bool(problem))
