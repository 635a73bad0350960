"""``lmstation --self-test``: the whole app, offscreen, on the starter model: the window opens, the
model loads, a question gets a streamed reply. Prints and writes a report (versions, device,
timings, paths) for support requests and for checking a freshly built bundle. Exit 0 on success.

The chat goes to a temporary store: the user's own history is left as it was.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

QUESTION = "What is the capital of France?"
TIMEOUT_S = 900.0  # a first run converts the starter model; a slow CPU takes minutes


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in ("lmstation", "torch", "transformers", "PySide6-Essentials", "triton", "safetensors", "tokenizers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def run_self_test(report_path: Path | None = None) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    from app import paths
    from app.chats.store import ChatStore
    from app.process_age import process_age_s
    from app.ui.engine_bridge import start_bridge, stop_bridge
    from app.ui.main_window import MainWindow
    from app.ui.settings import AppSettings

    process_start = time.time() - process_age_s()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    report: dict = {"ok": False, "question": QUESTION, "versions": _versions(),
                    "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
                    "frozen": bool(getattr(sys, "frozen", False)), "executable": sys.executable,
                    "paths": {"data": str(paths.data_dir()), "models": str(paths.models_dir())}, "timings_s": {}}
    timings = report["timings_s"]
    chats = tempfile.TemporaryDirectory(prefix="lmstation-self-test-")
    store = ChatStore(Path(chats.name))
    bridge, thread = start_bridge()
    window = MainWindow(store, bridge, settings=AppSettings())
    loaded: dict = {}
    failures: list[str] = []
    bridge.loaded.connect(loaded.update)
    bridge.load_failed.connect(failures.append)
    first_token: list[float] = []
    bridge.delta.connect(lambda *_: first_token.append(time.time()) if not first_token else None)
    finished: list[dict] = []
    window.chat.reply_finished.connect(finished.append)

    def wait(condition, what: str) -> bool:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            if failures or time.monotonic() > deadline:
                report["error"] = failures[0] if failures else f"timed out waiting for {what}"
                return False
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.005)
        return True

    try:
        window.show()
        app.processEvents()
        timings["window_shown"] = time.time() - process_start
        if wait(lambda: window.state_label.text() == "Ready", "the starter model to load"):
            timings["model_ready"] = time.time() - process_start
            report["engine"] = {k: loaded.get(k) for k in ("model", "device", "dtype", "kernels", "cache_tokens",
                                                           "max_model_len")}
            chat = window.chat
            chat.sampling.temperature.setValue(0.0)
            chat.sampling.max_new_tokens.setValue(32)
            chat.input.setPlainText(QUESTION)
            asked = time.time()
            chat.send()
            if wait(lambda: finished, "the reply"):
                info = finished[0]
                report["reply"] = chat.bubbles()[-1].text()
                report["finish"] = {k: info.get(k) for k in ("finish_reason", "error")}
                if first_token:
                    timings["first_token_after_question"] = first_token[0] - asked
                    timings["first_token"] = first_token[0] - process_start
                timings["reply_done"] = time.time() - process_start
                report["ok"] = not info.get("error") and bool(report["reply"].strip())
                if info.get("error"):
                    report["error"] = info["error"]
    finally:
        window.close()
        stop_bridge(bridge, thread)
        store.close()
        chats.cleanup()
    target = report_path or paths.data_dir() / "logs" / "self-test.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))
    _print(report, target)
    return 0 if report["ok"] else 1


def _print(report: dict, target: Path) -> None:
    print(f"LM Station self-test: {'PASSED' if report['ok'] else 'FAILED'}")
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"  platform: {report['platform']}; executable: {report['executable']}"
          f"{' (bundle)' if report['frozen'] else ''}")
    if "engine" in report:
        engine = report["engine"]
        print(f"  engine: {Path(engine['model'] or '').name} on {engine['device']} ({engine['dtype']}, "
              f"{engine['kernels']}), KV cache {engine['cache_tokens']} tokens")
    print("  timings after the process started: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f} s"
                                                             for k, v in report["timings_s"].items()))
    if "reply" in report:
        print(f"  Q: {report['question']}\n  A: {report['reply'].strip()}")
    if report.get("error"):
        print(f"  error: {report['error']}")
    print(f"  data: {report['paths']['data']}; report written to {target}")
