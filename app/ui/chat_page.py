"""The chat page: conversations on the left, the selected one's messages and the input in the
middle, the model to talk to and its settings on the right.

Each model on offer (ChatModel) comes with the bridge that streams its replies: the local engine's,
or a remote endpoint's with the same signals, so this page never knows which one it talks to.
A reply streams into its bubble: deltas from the bridge collect in a buffer that a timer
renders at most every RENDER_MS, so a fast engine never floods the GUI thread with repaints.
Every message is stored when sent; the reply as it grows (ReplyWriter), and whole at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QMessageBox, QProgressBar,
    QPushButton, QScrollArea, QSplitter, QVBoxLayout, QWidget,
)

from app.chats.store import ChatStore, Message, ReplyWriter
from app.ui.attachments import PICTURE_FILTER, AttachmentTray, ChatInput, png_bytes
from app.ui.message_bubble import MessageBubble, describe_reply
from app.ui.sampling_panel import SamplingPanel

RENDER_MS = 33


@dataclass(frozen=True)
class ChatModel:
    """A model the chat can talk to, and the bridge that streams its replies: request_generate and
    request_stop in, delta and finished out, with EngineBridge's signatures."""

    key: str  # stays the same while the model is on offer (the picker keeps it selected)
    label: str  # as the model picker shows it
    name: str  # stored with each reply it writes
    bridge: QObject
    ready: bool = True  # False: nothing can be sent to it now (no model loaded, say)
    vision: bool = False  # it reads pictures
    context_tokens: int = 0  # its context length; 0: not known


class ChatPage(QWidget):
    reply_finished = Signal(dict)  # the finish info of the reply that just ended

    def __init__(self, store: ChatStore):
        super().__init__()
        self.store = store
        self.conversation_id: int | None = None
        self.model_picker = QComboBox()
        self.model_picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_picker.setMinimumContentsLength(20)  # long remote names elide instead of widening the page
        self.models: list[ChatModel] = []
        self.model: ChatModel | None = None  # the one replies come from
        self._heard: list[QObject] = []  # every bridge whose signals reach this page
        self.sampling = SamplingPanel()
        self.extra_generation: dict = {}  # GenerationConfig fields the panel has no control for
        self._reply_key = 0  # unique across bridges: a key names one reply of this page, whichever bridge has it
        self._active: tuple[int, MessageBubble, ReplyWriter, QObject] | None = None  # streaming reply, its bridge
        self._pending = ""
        self._render = QTimer(self, interval=RENDER_MS, timeout=self._flush_pending)

        self.search = QLineEdit(placeholderText="Search chats")
        self.conversation_list = QListWidget()
        new_button = QPushButton("New chat")
        self.delete_button = QPushButton("Delete")
        self.export_button = QPushButton("Export…")
        left = QVBoxLayout()
        left.addWidget(new_button)
        left.addWidget(self.search)
        left.addWidget(self.conversation_list, 1)
        manage = QHBoxLayout()
        manage.addWidget(self.export_button)
        manage.addWidget(self.delete_button)
        left.addLayout(manage)
        left_panel = QWidget(minimumWidth=200)
        left_panel.setLayout(left)

        self.messages_box = QVBoxLayout()
        self.messages_box.addStretch(1)
        holder = QWidget()
        holder.setLayout(self.messages_box)
        self.scroll = QScrollArea(widgetResizable=True)
        self.scroll.setWidget(holder)
        self.input = ChatInput(placeholderText="Message the model; drop or paste pictures here")
        self.input.setFixedHeight(90)
        self.tray = AttachmentTray()
        self.notice = QLabel("", objectName="notice", wordWrap=True)
        self.attach_button = QPushButton("Image…")
        self.setAcceptDrops(True)
        self.send_button = QPushButton("Send", enabled=False)
        self.stop_button = QPushButton("Stop", enabled=False)
        self.regenerate_button = QPushButton("Regenerate", enabled=False)
        self.edit_button = QPushButton("Edit last", enabled=False)
        self.stats_label = QLabel("", objectName="muted")
        buttons = QHBoxLayout()
        buttons.addWidget(self.attach_button)
        buttons.addStretch(1)
        buttons.addWidget(self.edit_button)
        buttons.addWidget(self.regenerate_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.send_button)
        right = QVBoxLayout()
        right.addWidget(self.scroll, 1)
        right.addWidget(self.tray)
        right.addWidget(self.notice)
        right.addWidget(self.stats_label)
        right.addWidget(self.input)
        right.addLayout(buttons)
        right_panel = QWidget()
        right_panel.setLayout(right)

        self.context_meter = QProgressBar(minimum=0, maximum=1, value=0)
        self.context_meter.setFormat("context: %v of %m tokens")
        picker_box = QWidget()  # margins like the sampling panel's, so the two line up
        picker_column = QVBoxLayout(picker_box)
        picker_column.addWidget(QLabel("<b>Model</b>"))
        picker_column.addWidget(self.model_picker)
        side = QVBoxLayout()
        side.addWidget(picker_box)
        side.addWidget(self.sampling)
        side.addWidget(self.context_meter)
        side.addStretch(1)
        side_panel = QWidget(minimumWidth=240, maximumWidth=320)
        side_panel.setLayout(side)

        splitter = QSplitter()
        splitter.addWidget(left_panel)
        splitter.addWidget(right_panel)
        splitter.addWidget(side_panel)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 760, 260])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        new_button.clicked.connect(self.new_conversation)
        self.delete_button.clicked.connect(self.delete_conversation)
        self.export_button.clicked.connect(self._pick_export)
        self.search.textChanged.connect(self.refresh_list)
        self.conversation_list.currentItemChanged.connect(self._on_select)
        self.conversation_list.itemChanged.connect(self._on_renamed)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button.clicked.connect(self.regenerate)
        self.edit_button.clicked.connect(self.edit_last)
        self.sampling.system_prompt_edited.connect(self._on_system_prompt)
        self.attach_button.clicked.connect(self._pick_images)
        self.input.image_pasted.connect(lambda data: self.attach_data(data, "the pasted picture"))
        self.tray.rejected.connect(self.notice.setText)
        self.model_picker.currentIndexChanged.connect(lambda index: self._use(self.models[index]))
        self.refresh_list()
        self._update_actions()

    # ---- the model -------------------------------------------------------------------------------
    def set_models(self, models: list[ChatModel]) -> None:
        """The models on offer (at least one); the chosen one stays chosen while it is offered, else
        the first is."""
        self.models = models
        keys = [m.key for m in models]
        at = keys.index(self.model.key) if self.model is not None and self.model.key in keys else 0
        self.model_picker.blockSignals(True)
        self.model_picker.clear()
        for i, m in enumerate(models):
            self.model_picker.addItem(m.label)
            self.model_picker.setItemData(i, m.label, Qt.ItemDataRole.ToolTipRole)  # the whole name, if elided
        self.model_picker.setCurrentIndex(at)
        self.model_picker.blockSignals(False)
        self._use(models[at])

    def _use(self, model: ChatModel) -> None:
        self.model = model
        self.model_picker.setToolTip(model.label)
        if all(model.bridge is not heard for heard in self._heard):
            # Queued to the GUI thread: engine and worker threads emit these.
            model.bridge.delta.connect(self._on_delta, Qt.ConnectionType.QueuedConnection)
            model.bridge.finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)
            self._heard.append(model.bridge)
        self.context_meter.setVisible(model.context_tokens > 0)
        self.context_meter.setMaximum(max(1, model.context_tokens))
        self._update_actions()

    # ---- conversations ---------------------------------------------------------------------------
    def refresh_list(self) -> None:
        current = self.conversation_id
        self.conversation_list.blockSignals(True)
        self.conversation_list.clear()
        for conv in self.store.conversations(self.search.text().strip()):
            item = QListWidgetItem(conv.title)
            item.setData(Qt.ItemDataRole.UserRole, conv.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)  # double-click renames
            self.conversation_list.addItem(item)
            if conv.id == current:
                self.conversation_list.setCurrentItem(item)
        self.conversation_list.blockSignals(False)

    def new_conversation(self) -> None:
        conv = self.store.new_conversation()
        self.search.clear()
        self.open_conversation(conv.id)

    def delete_conversation(self) -> None:
        if self.conversation_id is None or self._active is not None:
            return
        title = self.store.conversation(self.conversation_id).title
        answer = QMessageBox.question(self, "Delete chat", f"Delete “{title}” and all its messages? This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.store.delete(self.conversation_id)
            self.conversation_id = None
            self._show_messages([])
            self.refresh_list()

    def _pick_export(self) -> None:
        if self.conversation_id is None:
            return
        title = self.store.conversation(self.conversation_id).title
        file, _ = QFileDialog.getSaveFileName(self, "Export chat", f"{title}.md", "Markdown (*.md);;JSON (*.json)")
        if file:
            self.export_to(Path(file))

    def export_to(self, file: Path) -> None:
        """Markdown, or JSON when the name ends in .json; a failure is said, not raised."""
        if file.suffix.lower() == ".json":
            text = json.dumps(self.store.export_json(self.conversation_id), indent=2, ensure_ascii=False)
        else:
            text = self.store.export_markdown(self.conversation_id)
        try:
            file.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.notice.setText(f"Could not export to {file}: {exc.strerror or exc}")
            return
        self.notice.setText(f"Exported to {file}.")

    def _on_renamed(self, item: QListWidgetItem) -> None:
        title = item.text().strip()
        conversation_id = item.data(Qt.ItemDataRole.UserRole)
        if title:
            self.store.rename(conversation_id, title)
        else:  # an empty name is not a name: keep the old one
            self.conversation_list.blockSignals(True)
            item.setText(self.store.conversation(conversation_id).title)
            self.conversation_list.blockSignals(False)

    def _on_select(self, item: QListWidgetItem | None) -> None:
        if item is not None and self._active is None:
            self.open_conversation(item.data(Qt.ItemDataRole.UserRole))

    def open_conversation(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        self.sampling.system_prompt.setText(self.store.conversation(conversation_id).system_prompt)
        messages = self.store.messages(conversation_id)
        self._show_messages(messages)
        last = next((m.stats for m in reversed(messages) if m.stats), None)
        self._show_context(last)
        self.refresh_list()

    def _on_system_prompt(self, text: str) -> None:
        if self.conversation_id is None:
            self.conversation_id = self.store.new_conversation(system_prompt=text).id
            self.refresh_list()
        else:
            self.store.set_system_prompt(self.conversation_id, text)

    def _show_context(self, stats: dict | None) -> None:
        used = (stats["prompt_tokens"] + stats["completion_tokens"]) if stats else 0
        self.context_meter.setValue(min(used, self.context_meter.maximum()))

    def _show_messages(self, messages: list[Message]) -> None:
        while self.messages_box.count() > 1:
            widget = self.messages_box.takeAt(0).widget()
            widget.deleteLater()
        for m in messages:
            self._add_bubble(m.role, m.content, m.id, m.stats)
        self._update_actions()

    def _add_bubble(self, role: str, text: str, message_id: int | None = None, stats: dict | None = None) -> MessageBubble:
        bubble = MessageBubble(role, text, message_id, stats)
        if role == "user":
            bubble.edit_requested.connect(lambda: self.edit_message(bubble))
        self.messages_box.insertWidget(self.messages_box.count() - 1, bubble)
        QTimer.singleShot(0, lambda: self.scroll.verticalScrollBar().setValue(self.scroll.verticalScrollBar().maximum()))
        return bubble

    def bubbles(self) -> list[MessageBubble]:
        return [self.messages_box.itemAt(i).widget() for i in range(self.messages_box.count() - 1)]

    # ---- pictures ------------------------------------------------------------------------------------
    @property
    def attachments(self) -> list:
        return self.tray.images

    def _pick_images(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Attach pictures", "", PICTURE_FILTER)
        self.attach_files([Path(f) for f in files])

    def attach_files(self, files: list[Path]) -> None:
        self.notice.setText("")
        self.tray.attach_files(files)

    def attach_data(self, data: bytes, name: str) -> None:
        self.notice.setText("")
        self.tray.attach_data(data, name)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        mime = event.mimeData()
        if mime.hasUrls():
            self.attach_files([Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()])
        elif mime.hasImage():
            self.attach_data(png_bytes(QImage(mime.imageData())), "the dropped picture")
        event.acceptProposedAction()

    # ---- sending and streaming ----------------------------------------------------------------------
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or not self._can_send():
            return
        if self.attachments and not self.model.vision:  # never drop pictures silently
            self.notice.setText("The loaded model reads text only, so it cannot see pictures. Load a vision "
                                "model (Models page), or remove them to send the message.")
            return
        if self.conversation_id is None:
            self.conversation_id = self.store.new_conversation(title=text[:40]).id
        elif not self.store.messages(self.conversation_id):
            self.store.rename(self.conversation_id, text[:40])
        self.input.clear()
        images = [self.store.store_image(image.data, image.suffix) for image in self.attachments]
        self.tray.clear()
        message = self.store.add_message(self.conversation_id, "user", text, images=images)
        self._add_bubble("user", text, message.id)
        self.refresh_list()
        self._start_reply()

    def regenerate(self) -> None:
        """Drops the last reply and asks again."""
        bubbles = self.bubbles()
        if not self._can_send() or not bubbles or bubbles[-1].role != "assistant":
            return
        self.store.truncate_from(self.conversation_id, bubbles[-1].message_id)
        self._show_messages(self.store.messages(self.conversation_id))
        self._start_reply()

    def edit_last(self) -> None:
        users = [b for b in self.bubbles() if b.role == "user"]
        if users:
            self.edit_message(users[-1])

    def edit_message(self, bubble: MessageBubble) -> None:
        """Takes a question back into the input; it and everything after it go. Send resends it."""
        if self._active is not None:
            return
        text = bubble.text()
        self.store.truncate_from(self.conversation_id, bubble.message_id)
        self._show_messages(self.store.messages(self.conversation_id))
        self.input.setPlainText(text)

    def _start_reply(self) -> None:
        conv = self.store.conversation(self.conversation_id)
        chat = [{"role": m.role, "content": self._content(m)} for m in self.store.messages(self.conversation_id)]
        if conv.system_prompt:
            chat.insert(0, {"role": "system", "content": conv.system_prompt})
        reply = self.store.add_message(self.conversation_id, "assistant", "", complete=False, model=self.model.name)
        self._reply_key += 1
        bridge = self.model.bridge
        self._active = (self._reply_key, self._add_bubble("assistant", "", reply.id), self.store.reply_writer(reply.id),
                        bridge)
        self._pending = ""
        self.stats_label.setText("Generating…")
        self._update_actions()
        self._render.start()
        bridge.request_generate.emit(self._reply_key, chat, {**self.sampling.generation(), **self.extra_generation})

    def _content(self, message) -> str | list[dict]:
        """A stored message as the engine takes it: text, or its pictures (files in the store)
        then its text. Pictures in the conversation reach a text-only model as a note instead."""
        if not message.images:
            return message.content
        if not self.model.vision:
            return f"[{len(message.images)} picture(s) not shown: this model reads text only]\n{message.content}"
        return [*({"type": "image", "image": str(self.store.image_path(name))} for name in message.images),
                {"type": "text", "text": message.content}]

    def stop(self) -> None:
        if self._active is not None:
            key, _, _, bridge = self._active
            bridge.request_stop.emit(key)

    @Slot(int, str, int)
    def _on_delta(self, key: int, text: str, _tokens: int) -> None:
        if self._active is not None and key == self._active[0]:
            self._pending += text
            self._active[2].append(text)

    def _flush_pending(self) -> None:
        if self._active is not None and self._pending:
            bubble = self._active[1]
            bubble.setText(bubble.text() + self._pending)
            self._pending = ""

    @Slot(int, dict)
    def _on_finished(self, key: int, info: dict) -> None:
        if self._active is None or key != self._active[0]:
            return
        self._flush_pending()
        _, bubble, writer, _ = self._active
        self._active = None
        self._render.stop()
        writer.finish(stats=info.get("stats"), complete=info.get("finish_reason") != "error")
        if info.get("error"):
            bubble.setText(bubble.text() + f"\n\n*Error: {info['error']}*")
        self.stats_label.setText(describe_reply(info.get("stats"), info.get("finish_reason")))
        bubble.set_stats(info.get("stats"), info.get("finish_reason"))
        self.notice.setText(self._context_notice(info))
        if info.get("stats"):
            self._show_context(info["stats"])
        self._update_actions()
        self.reply_finished.emit(info)

    def _context_notice(self, info: dict) -> str:
        """Says plainly when the conversation has outgrown the model's context (else nothing). A
        model whose context is not known (a remote one) can only say so by refusing the prompt."""
        limit = self.model.context_tokens
        if info.get("error_type") == "ContextOverflowError":
            size = f" ({limit:,} tokens)" if limit else ""
            return (f"This conversation no longer fits the model's context{size}. "
                    "Start a new chat, or use Edit last to shorten your message.")
        stats = info.get("stats")
        filled = stats and stats["prompt_tokens"] + stats["completion_tokens"] >= limit
        if info.get("finish_reason") == "length" and limit and filled:
            return (f"The reply stopped because the conversation filled the model's context ({limit:,} tokens). "
                    "Start a new chat to go on.")
        return ""

    def _can_send(self) -> bool:
        """Sending needs a model that is ready; a reply in progress keeps Send off until it ends."""
        return self._active is None and self.model is not None and self.model.ready

    def _update_actions(self) -> None:
        idle = self._active is None
        bubbles = self.bubbles()
        self.send_button.setEnabled(self._can_send())
        self.stop_button.setEnabled(not idle)
        self.regenerate_button.setEnabled(self._can_send() and bool(bubbles) and bubbles[-1].role == "assistant")
        self.edit_button.setEnabled(idle and any(b.role == "user" for b in bubbles))
        self.model_picker.setEnabled(idle)  # a reply finishes with the model that began it
