"""The chat page on its own: pictures (pick, drop, paste of real files), conversations, copying."""

from __future__ import annotations

import io
import json

import pytest

from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QImage
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox

from app.chats.store import ChatStore
from app.ui.attachments import Thumbnail
from app.ui.chat_page import ChatModel, ChatPage
from app.ui.engine_bridge import EngineBridge
from app.ui.markdown_view import split_segments
from app.ui.message_bubble import MessageBubble


@pytest.fixture
def page(qtbot, tmp_path):
    store = ChatStore(tmp_path / "chats")
    chat = ChatPage(store)
    # A bridge with no engine started: nothing here generates
    chat.set_models([ChatModel("local", "tiny", "tiny", EngineBridge(), ready=False)])
    qtbot.addWidget(chat)
    chat.show()
    yield chat
    store.close()


def write(tmp_path, name: str, kind: str, size=(40, 30), mode="RGB") -> object:
    out = io.BytesIO()
    Image.new(mode, size, color=0).save(out, format=kind)
    path = tmp_path / name
    path.write_bytes(out.getvalue())
    return path


def thumbnails(chat: ChatPage) -> list[Thumbnail]:
    return chat.tray.thumbnails()


def answer_next_dialog(qtbot, button: QMessageBox.StandardButton) -> list[str]:
    """Presses a button of the next modal message box (a real one, shown by the code under test)."""
    seen = []

    def press() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, press)
            return
        seen.append(box.text())
        box.button(button).click()

    QTimer.singleShot(0, press)
    return seen


def test_picked_files_become_thumbnails_or_clear_messages(page: ChatPage, tmp_path, qtbot) -> None:
    good = [write(tmp_path, "a.png", "PNG"), write(tmp_path, "b.jpg", "JPEG"), write(tmp_path, "c.webp", "WEBP")]
    page.attach_files(good)
    assert len(thumbnails(page)) == 3 and [a.suffix for a in page.attachments] == [".png", ".jpg", ".webp"]
    assert page.notice.text() == ""

    noisy = io.BytesIO()
    Image.effect_noise((300, 300), 64).save(noisy, format="PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(noisy.getvalue()[: len(noisy.getvalue()) // 2])
    page.attach_files([truncated])
    assert "cut.png is damaged or incomplete" in page.notice.text()
    page.attach_files([write(tmp_path, "huge.png", "PNG", size=(20_000, 10_000), mode="1")])
    assert "huge.png is too large (200 megapixels)" in page.notice.text()
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    page.attach_files([text])
    assert "notes.txt is not a picture" in page.notice.text()
    assert len(thumbnails(page)) == 3  # none of those came along

    qtbot.mouseClick(thumbnails(page)[0].remove_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(thumbnails(page)) == 2)
    assert [a.suffix for a in page.attachments] == [".jpg", ".webp"]


def test_dropped_and_pasted_pictures(page: ChatPage, tmp_path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(write(tmp_path, "drop.png", "PNG")))])
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    page.dropEvent(drop)
    pasted = QMimeData()
    image = QImage(20, 10, QImage.Format.Format_RGB32)
    image.fill(0xFF3366)
    pasted.setImageData(image)
    page.input.insertFromMimeData(pasted)
    assert [(a.suffix, a.width, a.height) for a in page.attachments] == [(".png", 40, 30), (".png", 20, 10)]
    assert page.input.toPlainText() == ""  # the picture did not become text


def test_a_text_only_model_says_so_and_sends_nothing(page: ChatPage, tmp_path) -> None:
    page.set_models([ChatModel("local", "tiny", "tiny", page.model.bridge)])  # ready, and reads text only
    page.attach_files([write(tmp_path, "a.png", "PNG")])
    page.input.setPlainText("What is in this picture?")
    page.send()
    assert "reads text only" in page.notice.text()
    assert page.store.conversations() == [] and page.input.toPlainText() == "What is in this picture?"
    assert len(page.attachments) == 1


def test_conversations_rename_in_place_search_and_delete(page: ChatPage, qtbot) -> None:
    first = page.store.new_conversation("Trip to Lyon")
    page.store.add_message(first.id, "user", "What should I see in Lyon?")
    page.store.new_conversation("Snow poem")
    page.refresh_list()
    assert [page.conversation_list.item(i).text() for i in range(2)] == ["Snow poem", "Trip to Lyon"]
    item = page.conversation_list.item(1)
    assert item.flags() & Qt.ItemFlag.ItemIsEditable  # double-click edits the name in place
    item.setText("Lyon weekend")  # what the in-place editor commits
    assert page.store.conversation(first.id).title == "Lyon weekend"
    item.setText("  ")  # an empty name is refused
    assert item.text() == "Lyon weekend" and page.store.conversation(first.id).title == "Lyon weekend"
    page.search.setText("see in lyon")  # message text is searched too
    assert [page.conversation_list.item(i).text() for i in range(page.conversation_list.count())] == ["Lyon weekend"]
    page.conversation_list.setCurrentRow(0)
    assert page.conversation_id == first.id
    asked = answer_next_dialog(qtbot, QMessageBox.StandardButton.No)
    qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)
    assert asked == ["Delete “Lyon weekend” and all its messages? This cannot be undone."]
    assert len(page.store.conversations()) == 2 and page.conversation_id == first.id  # No keeps it
    answer_next_dialog(qtbot, QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)
    assert [c.title for c in page.store.conversations()] == ["Snow poem"]


def test_each_message_copies_its_text(page: ChatPage, qtbot) -> None:
    conv = page.store.new_conversation()
    page.store.add_message(conv.id, "user", "Show me code")
    page.store.add_message(conv.id, "assistant", "Here:\n\n```python\nprint('hi')\n```")
    page.open_conversation(conv.id)
    user, reply = page.bubbles()
    qtbot.mouseClick(reply.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == "Here:\n\n```python\nprint('hi')\n```"
    qtbot.mouseClick(user.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == "Show me code"


def test_code_blocks_are_highlighted_and_each_copies_its_code(page: ChatPage, qtbot) -> None:
    reply = ("Two ways:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nor in a shell:\n\n"
             "~~~bash\necho $((1 + 2))\n~~~\n\nBoth print **3**.")
    conv = page.store.new_conversation()
    page.store.add_message(conv.id, "assistant", reply)
    page.open_conversation(conv.id)
    view = page.bubbles()[0].view
    python, shell = view.code_blocks()
    assert python.language_label.text() == "python" and shell.language_label.text() == "bash"
    colours = python.code_label.text()
    assert "<span style=" in colours and "def" in colours  # pygments coloured the keywords
    qtbot.mouseClick(python.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == "def add(a, b):\n    return a + b"
    qtbot.mouseClick(shell.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == "echo $((1 + 2))"
    prose = [w.text() for w in view.findChildren(QLabel) if w.textFormat() == Qt.TextFormat.MarkdownText]
    assert prose == ["Two ways:", "or in a shell:", "Both print **3**."]


def test_a_streaming_code_block_redraws_only_its_own_piece(page: ChatPage, qtbot) -> None:
    bubble = MessageBubble("assistant")
    qtbot.addWidget(bubble)  # deleted at the test's end, while Qt still runs
    text = ""
    for piece in ["Here", " it is:\n\n```py", "thon\nx = 1\n", "y = 2\n", "```\n\nDone."]:
        text += piece
        bubble.setText(text)
        if piece == "y = 2\n":  # the fence is still open: the code runs to the end
            first_block = bubble.view.code_blocks()[0]
            assert first_block.segment.text == "x = 1\ny = 2"
    assert bubble.view.code_blocks() == [first_block]  # the same widget, updated in place
    assert [s.kind for s in split_segments(text)] == ["prose", "code", "prose"]


def test_any_question_can_be_edited_and_replies_show_their_speed(page: ChatPage, qtbot) -> None:
    conv = page.store.new_conversation("Two questions")
    page.store.add_message(conv.id, "user", "First question")
    answer = page.store.add_message(conv.id, "assistant", "")
    stats = {"ttft_s": 0.082, "decode_tokens_per_s": 93.94, "prompt_tokens": 67, "completion_tokens": 49}
    page.store.update_message(answer.id, "First answer", complete=True, stats=stats)
    page.store.add_message(conv.id, "user", "Second question")
    page.store.add_message(conv.id, "assistant", "Second answer")
    page.open_conversation(conv.id)
    first_question, first_answer = page.bubbles()[:2]
    assert first_answer.footer.text() == "first token 82 ms · 93.9 tok/s · 67 prompt + 49 reply tokens"
    assert first_question.footer.isHidden() and not hasattr(first_answer, "edit_button")
    qtbot.mouseClick(first_question.edit_button, Qt.MouseButton.LeftButton)
    assert page.input.toPlainText() == "First question" and page.bubbles() == []
    assert page.store.messages(conv.id) == []  # what followed the edited question went with it


def test_a_chat_exports_to_markdown_and_json(page: ChatPage, tmp_path) -> None:
    conv = page.store.new_conversation("Capitals")
    page.store.add_message(conv.id, "user", "What is the capital of France?")
    page.store.add_message(conv.id, "assistant", "Paris.")
    page.open_conversation(conv.id)
    page.export_to(tmp_path / "capitals.md")
    assert (tmp_path / "capitals.md").read_text() == page.store.export_markdown(conv.id)
    assert "# Capitals" in (tmp_path / "capitals.md").read_text() and page.notice.text().startswith("Exported to")
    page.export_to(tmp_path / "capitals.json")
    exported = json.loads((tmp_path / "capitals.json").read_text())
    assert [m["content"] for m in exported["messages"]] == ["What is the capital of France?", "Paris."]
    page.export_to(tmp_path / "no-such-folder" / "x.md")
    assert "Could not export" in page.notice.text() and "No such file or directory" in page.notice.text()
