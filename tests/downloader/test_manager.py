"""The download manager against a local hub, through the real huggingface_hub client: whole downloads,
resume after a dropped connection, pause/resume, cancel, checksums, clear errors, the disk-space check."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading

import pytest

from app.downloader import DownloadRequest, JobState, RetryPolicy
from app.downloader.folders import MANIFEST, staging_dir
from tests.downloader.conftest import blob, folder_files, listing
from tests.downloader.fake_hub import Fault

WEIGHTS = blob(3_000_000)
REPO_FILES = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "tokenizer.json": b'{"model": {}}',
    "model.safetensors": WEIGHTS,
    "pytorch_model.bin": b"the same weights, pickled",
    "onnx/model.onnx": b"an export",
    ".gitattributes": b"*.safetensors filter=lfs",
}
WANTED = ["config.json", "model.safetensors", "tokenizer.json"]


def request(hub, tmp_path, repo="org/model", **options) -> DownloadRequest:
    options.setdefault("dest", tmp_path / "models" / repo.replace("/", "--"))
    return DownloadRequest(repo, endpoint=hub.url, **options)


def ranges(hub, path: str) -> list[int]:
    """Where each ranged request for ``path`` started (at the storage host, after the hub's redirect)."""
    return [int(r.range.removeprefix("bytes=").rstrip("-")) for r in hub.requests_for(path)
            if r.range and r.status != 302]


def test_tiny_llama_downloads_and_loads_in_the_engine(hub, make_manager, tiny_model_factory, tmp_path) -> None:
    from app.engine import GenerationConfig, pipeline

    source = tiny_model_factory("llama")[0]
    served = folder_files(source)
    hub.add("org/tiny-llama", {**served, "pytorch_model.bin": b"duplicate", "onnx/model.onnx": b"export"})
    job = make_manager().add(request(hub, tmp_path, "org/tiny-llama"))
    done = job.wait(30)
    assert done.state is JobState.DONE, done.error
    got = folder_files(done.dest)
    assert json.loads(got.pop(MANIFEST))["revision"] == hub.repos["org/tiny-llama"].commit
    assert got == served  # the duplicates were left out, everything else arrived byte for byte
    assert listing(done.dest.parent) == [done.dest.name]  # no staging folder left behind
    with pipeline(done.dest, device="cpu", dtype="float32") as pipe:
        reply = pipe("The quick brown fox", GenerationConfig(temperature=0, max_new_tokens=6, ignore_eos=True))
    assert len(reply.token_ids) == 6


def test_progress_reports_files_total_speed_and_eta(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    seen = []
    job = make_manager(on_progress=seen.append).add(request(hub, tmp_path))
    assert job.wait(30).state is JobState.DONE
    states = [s.state for s in seen]
    assert states[0] is JobState.QUEUED and states[-1] is JobState.DONE and JobState.RUNNING in states
    running = [s for s in seen if s.state is JobState.RUNNING and s.files]
    assert [s.done_bytes for s in running] == sorted(s.done_bytes for s in running)
    mid = [s for s in running if s.current_file == "model.safetensors" and 0 < s.done_bytes < s.total_bytes]
    assert len(mid) > 10 and any(s.speed_bps > 0 and s.eta_s is not None for s in mid)
    final = seen[-1]
    assert [f.path for f in final.files] == WANTED and all(f.complete and f.done == f.size for f in final.files)
    assert final.done_bytes == final.total_bytes == sum(len(REPO_FILES[p]) for p in WANTED)
    assert final.fraction == 1.0 and final.revision == hub.repos["org/model"].commit


def test_dropped_connection_resumes_from_the_partial_file(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    hub.faults["model.safetensors"] = Fault("drop", after=1_000_000)
    done = make_manager().add(request(hub, tmp_path)).wait(30)
    assert done.state is JobState.DONE, done.error
    assert ranges(hub, "model.safetensors") == [1_000_000]
    assert (done.dest / "model.safetensors").read_bytes() == WEIGHTS


def test_pause_keeps_the_partial_file_and_resume_continues_it(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    paused_at: list[int] = []

    def pause_midway(s) -> None:
        weights = {f.path: f for f in s.files}.get("model.safetensors")
        if weights and weights.done >= 500_000 and not paused_at:
            paused_at.append(weights.done)
            manager.job(s.job_id).pause()

    manager = make_manager(on_progress=pause_midway)
    job = manager.add(request(hub, tmp_path))
    paused = job.wait(30)
    assert paused.state is JobState.PAUSED
    part = staging_dir(job.dest) / "model.safetensors.part"
    assert part.stat().st_size == paused_at[0] and not job.dest.exists()
    assert {f.path: f.done for f in paused.files}["model.safetensors"] == paused_at[0]
    job.resume()
    done = job.wait(30)
    assert done.state is JobState.DONE, done.error
    assert ranges(hub, "model.safetensors") == [paused_at[0]]
    assert (job.dest / "model.safetensors").read_bytes() == WEIGHTS


def test_cancel_removes_the_partial_files(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)

    def cancel_midway(s) -> None:
        if s.current_file == "model.safetensors" and s.done_bytes > 1_000_000:
            manager.job(s.job_id).cancel()

    manager = make_manager(on_progress=cancel_midway)
    job = manager.add(request(hub, tmp_path))
    assert job.wait(30).state is JobState.CANCELLED
    assert listing(tmp_path / "models") == []


def test_cancel_of_a_paused_job_removes_its_partial_files(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)

    def pause_midway(s) -> None:
        if s.current_file == "model.safetensors" and s.done_bytes > 1_000_000:
            manager.job(s.job_id).pause()

    manager = make_manager(on_progress=pause_midway)
    job = manager.add(request(hub, tmp_path))
    assert job.wait(30).state is JobState.PAUSED and staging_dir(job.dest).exists()
    job.cancel()
    assert job.state is JobState.CANCELLED and listing(tmp_path / "models") == []


def test_a_corrupted_transfer_is_fetched_again(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    hub.faults["model.safetensors"] = Fault("corrupt")
    done = make_manager().add(request(hub, tmp_path)).wait(30)
    assert done.state is JobState.DONE, done.error
    assert [r.status for r in hub.requests_for("model.safetensors")] == [302, 200, 302, 200]
    assert hashlib.sha256((done.dest / "model.safetensors").read_bytes()).hexdigest() == hashlib.sha256(
        WEIGHTS).hexdigest()


def test_a_small_file_is_checked_against_its_git_blob_id(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    hub.faults["config.json"] = Fault("corrupt", times=99)
    done = make_manager().add(request(hub, tmp_path)).wait(30)
    assert done.state is JobState.FAILED
    assert done.error.startswith("org/model: config.json: checksum mismatch: expected git-sha1")
    assert "after 3 attempts" in done.error and not done.dest.exists()


def test_corruption_that_persists_is_reported(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    hub.faults["model.safetensors"] = Fault("corrupt", times=99)
    done = make_manager().add(request(hub, tmp_path)).wait(30)
    assert done.state is JobState.FAILED
    assert "org/model: model.safetensors: checksum mismatch: expected sha256" in done.error
    assert not done.dest.exists()


def test_server_errors_are_retried_with_backoff(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    hub.faults["model.safetensors"] = Fault("status", status=503, times=2)
    done = make_manager().add(request(hub, tmp_path)).wait(30)
    assert done.state is JobState.DONE, done.error
    assert [r.status for r in hub.requests_for("model.safetensors") if r.status != 302] == [503, 503, 200]


def test_a_busy_hub_listing_is_retried(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    hub.faults["/api/models/org/model"] = Fault("status", status=503, times=2)
    done = make_manager().add(request(hub, tmp_path)).wait(30)
    assert done.state is JobState.DONE, done.error
    assert [r.status for r in hub.requests_for("/api/models/org/model")] == [503, 503, 200]


FAILURES = {  # case: (repo, request options, fault on the weights, how the error starts)
    "missing": ("org/missing", {}, None, "org/missing: repository not found on http://127.0.0.1:"),
    "private": ("org/private", {}, None, "org/private: repository not found on http://127.0.0.1:"),
    "gated": ("org/gated", {}, None, "org/gated: config.json: authentication required (HTTP 401)"),
    "wrong-token": ("org/gated", {"token": "not-it"}, None, "org/gated: config.json: access denied (HTTP 403)"),
    "revision": ("org/model", {"revision": "v9"}, None, "org/model: revision 'v9' not found"),
    "file-gone": ("org/model", {}, Fault("status", status=404),
                  "org/model: model.safetensors: not found on the server (HTTP 404)"),
    "stall": ("org/model", {}, Fault("stall", seconds=5, times=9),
              "org/model: model.safetensors: the connection timed out (gave up after 2 attempts)"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_failures_name_the_repo_and_the_cause(hub, make_manager, tmp_path, case) -> None:
    repo, options, fault, expected = FAILURES[case]
    hub.add("org/model", REPO_FILES)
    hub.add("org/private", REPO_FILES, token="s3cret", private=True)
    hub.add("org/gated", REPO_FILES, token="s3cret")
    hub.faults["model.safetensors"] = fault
    manager = make_manager(retry=RetryPolicy(attempts=2, backoff_s=0.01, timeout_s=1.0))
    done = manager.add(request(hub, tmp_path, repo, **{"token": "", **options})).wait(30)
    assert done.state is JobState.FAILED
    assert done.error.startswith(expected), done.error
    if case == "gated":
        assert "gated or private, set an access token" in done.error


def test_the_token_goes_to_the_hub_but_not_to_the_storage_host(hub, make_manager, tmp_path) -> None:
    hub.add("org/gated", REPO_FILES, token="s3cret")
    done = make_manager().add(request(hub, tmp_path, "org/gated", token="s3cret")).wait(30)
    assert done.state is JobState.DONE, done.error
    redirect, storage = hub.requests_for("model.safetensors")
    assert redirect.status == 302 and redirect.authorization == "Bearer s3cret"
    assert storage.status == 200 and storage.authorization is None


def test_the_stored_token_is_used_when_the_request_has_none(hub, make_manager, tmp_path) -> None:
    hub.add("org/gated", REPO_FILES, token="s3cret")
    manager = make_manager()
    manager.tokens.set("hf", "s3cret")
    done = manager.add(request(hub, tmp_path, "org/gated")).wait(30)
    assert done.state is JobState.DONE, done.error


def test_not_enough_disk_space_is_refused_before_any_byte_is_written(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    asked = []
    manager = make_manager(free_bytes=lambda path: asked.append(path) or 2_000_000)
    done = manager.add(request(hub, tmp_path)).wait(30)
    assert done.state is JobState.FAILED
    assert done.error.startswith("org/model: not enough disk space in ")
    assert "needs 3.0 MB more, 2.0 MB is free" in done.error
    assert asked == [tmp_path / "models"] and listing(tmp_path) == []
    assert [r.path for r in hub.log] == ["/api/models/org/model"]  # the listing, no file


def test_the_space_check_counts_what_is_already_on_disk(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    gate = threading.Event()

    def pause_late(s) -> None:
        if s.current_file == "model.safetensors" and s.done_bytes > 2_500_000 and not gate.is_set():
            gate.set()
            job.pause()

    manager = make_manager(on_progress=pause_late, reserve_bytes=0)
    job = manager.add(request(hub, tmp_path))
    assert job.wait(30).state is JobState.PAUSED
    manager.config = dataclasses.replace(manager.config, free_bytes=lambda path: 600_000)
    job.resume()
    assert job.wait(30).state is JobState.DONE


def test_a_finished_download_is_not_fetched_again_and_a_foreign_folder_is_refused(hub, make_manager,
                                                                                  tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    manager = make_manager()
    first = manager.add(request(hub, tmp_path)).wait(30)
    fetched = len(hub.log)
    again = manager.add(request(hub, tmp_path)).wait(30)
    assert again.state is JobState.DONE and again.done_bytes == first.done_bytes
    assert len(hub.log) == fetched + 1  # just the listing
    foreign = tmp_path / "models" / "mine"
    foreign.mkdir()
    refused = manager.add(request(hub, tmp_path, dest=foreign)).wait(30)
    assert refused.state is JobState.FAILED and "already exists and is not a download of it" in refused.error


def test_jobs_run_in_order_and_a_failed_job_can_be_retried(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", REPO_FILES)
    hub.add("org/other", {"config.json": b"{}", "model.safetensors": blob(1000, seed=1)})
    hub.faults["model.safetensors"] = Fault("status", status=500, times=3)  # both repos share the name
    manager = make_manager()
    first = manager.add(request(hub, tmp_path))
    second = manager.add(request(hub, tmp_path, "org/other"))
    assert first.wait(30).state is JobState.FAILED  # three 500s: out of attempts
    assert second.wait(30).state is JobState.DONE
    first.resume()
    assert first.wait(30).state is JobState.DONE
    assert [j.id for j in manager.jobs()] == [first.id, second.id]
