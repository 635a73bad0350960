"""The ``lmstation`` command as a user runs it, on the starter model, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LMSTATION = str(Path(sys.executable).parent / "lmstation")


def run(args: list[str], home: Path, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMSTATION_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([LMSTATION, *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout)


def test_chat_prompt_answers_paris(starter_model, lmstation_home) -> None:
    done = run(["chat", "--prompt", "What is the capital of France?", "--temperature", "0"], lmstation_home)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout


def test_interactive_chat_keeps_history(starter_model, lmstation_home) -> None:
    script = "What is the capital of France?\n/reset\nWhat is the capital of Germany?\n/exit\n"
    done = run(["chat", "--temperature", "0", "--max-new-tokens", "30"], lmstation_home, stdin=script)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and "Berlin" in done.stdout


def test_unknown_model_is_a_clear_error(lmstation_home) -> None:
    done = run(["chat", "no-such-model", "--prompt", "hi"], lmstation_home)
    assert done.returncode == 1
    assert "no model named 'no-such-model'" in done.stderr


def test_bench_prints_engine_and_hf_side_by_side(starter_model, lmstation_home) -> None:
    done = run(["bench", "--baseline", "hf", "--input-len", "16", "--output-len", "8", "--json"], lmstation_home)
    assert done.returncode == 0, done.stderr
    ours, hf = json.loads(done.stdout)["batch"]
    assert ours["name"] == "lmstation" and hf["name"] == "hf-transformers"
    assert ours["dtype"] == hf["dtype"] and ours["decode_tokens_per_s"] > 0 and hf["decode_tokens_per_s"] > 0


def test_gguf_file_is_imported_into_the_library(starter_model, lmstation_home) -> None:
    from app.engine.starter import starter_gguf_path

    done = run(["chat", str(starter_gguf_path()), "--prompt", "What is the capital of France?", "--temperature", "0",
                "--max-new-tokens", "12"], lmstation_home)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert (lmstation_home / "models" / starter_gguf_path().stem / "config.json").is_file()


def test_bench_random_weights_of_a_real_shape(lmstation_home) -> None:
    done = run(["bench", "--shape", "smollm2-135m", "--device", "cpu", "--input-len", "8", "--output-len", "4",
                "--workload", "3", "--json"], lmstation_home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["workload"]["finished"] == 3 and report["workload"]["output_tokens_per_s"] > 0


def test_serve_answers_an_openai_client_and_stops_on_ctrl_c(starter_model, lmstation_home) -> None:
    import signal
    import socket
    import time

    from openai import OpenAI

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "LMSTATION_HOME": str(lmstation_home), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([LMSTATION, "serve", "--port", str(port), "--device", "cpu"], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any("Serving" in line for line in lines) and time.monotonic() < deadline:
            lines.append(server.stderr.readline())
            assert server.poll() is None, "".join(lines)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=20,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in reply.choices[0].message.content
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_serve_refuses_an_open_address_without_a_key(lmstation_home) -> None:
    done = run(["serve", "--host", "0.0.0.0"], lmstation_home, timeout=60)
    assert done.returncode == 1 and "API key" in done.stderr


def test_self_test_reports_a_reply(starter_model, lmstation_home, tmp_path) -> None:
    report = tmp_path / "report.json"
    done = run(["--self-test", "--report", str(report)], lmstation_home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout and "Paris" in done.stdout
    data = json.loads(report.read_text())
    assert data["ok"] and "Paris" in data["reply"] and data["engine"]["device"] == "cpu"
    assert {"window_shown", "model_ready", "first_token", "reply_done"} <= set(data["timings_s"])
    assert data["versions"]["torch"] and data["paths"]["data"] == str(lmstation_home)
