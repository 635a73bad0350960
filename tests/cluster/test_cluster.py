"""LM Station engines as Ray Serve replicas on a two-node cluster (CPU): the starter model with two
replicas and a tiny random Llama with one, behind one OpenAI endpoint, driven with the official
openai client. The tests run in order on one deployment: load across both models, conversation
affinity, a replica killed mid-stream and replaced, then shutdown leaving no Ray process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass

import pytest
import yaml

from app.cluster.board import ReplicaReport
from tests.cluster.conftest import ray_processes

pytestmark = pytest.mark.slow

TINY = "tiny-llama"
# Fixed lengths (end-of-sequence ignored) make every reply checkable
NEW_TOKENS = 8


@dataclass
class Deployment:
    base_url: str
    starter: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def deployment(ray_cluster, starter_model, tiny_model_factory) -> Deployment:
    tiny, _ = tiny_model_factory("llama")
    port = free_port()
    config = {"port": port, "models": [
        {"model": str(starter_model), "replicas": 2, "device": "cpu", "num_cache_blocks": 160},
        {"name": TINY, "model": str(tiny), "replicas": 1, "device": "cpu", "num_cache_blocks": 64}]}
    path = ray_cluster.folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    done = ray_cluster.command("serve", str(path))
    assert done.returncode == 0, done.stderr
    assert f"http://127.0.0.1:{port}/v1" in done.stderr
    return Deployment(f"http://127.0.0.1:{port}/v1", starter_model.name)


def replicas(model: str) -> dict[str, ReplicaReport]:
    """The model's live replicas as they report themselves on the board, by replica id."""
    from app.cluster.status import cluster_status

    return {r.replica: r for r in cluster_status().replicas if r.model == model}


def served(model: str, total: int = 0, timeout_s: float = 30) -> dict[str, int]:
    """Each live replica's count of finished requests, once they add up to ``total`` (replicas post
    their counts every second, later when busy)."""
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(1.5)
        counts = {replica: report.served for replica, report in replicas(model).items()}
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts


def client(deployment: Deployment):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=deployment.base_url, api_key="unused", max_retries=0, timeout=120)


async def stream_chat(api, model: str, messages: list[dict], max_tokens: int = NEW_TOKENS) -> dict:
    """One streamed reply, checked for shape as it arrives: one id, the model's name, text pieces,
    then a finish reason and the usage."""
    stream = await api.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.7, seed=len(messages[-1]["content"]),
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    ids, text, reason, usage = set(), [], None, None
    async for chunk in stream:
        ids.add(chunk.id)
        assert chunk.model == model
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage:
            usage = chunk.usage
    assert len(ids) == 1
    return {"text": "".join(text), "reason": reason, "usage": usage}


def test_64_streaming_requests_over_two_models(deployment) -> None:
    before = served(deployment.starter)
    assert len(before) == 2, before

    async def main():
        api = client(deployment)
        models = [deployment.starter if n % 2 else TINY for n in range(64)]
        replies = await asyncio.gather(*(
            stream_chat(api, model, [{"role": "user", "content": f"Request {n}: name a colour."}])
            for n, model in enumerate(models)))
        await api.close()
        return list(zip(models, replies))

    results = asyncio.run(main())
    assert len(results) == 64
    for model, reply in results:
        assert reply["reason"] == "length" and reply["usage"].completion_tokens == NEW_TOKENS, (model, reply)
        assert reply["usage"].prompt_tokens > 0
    assert all(reply["text"] for model, reply in results if model == deployment.starter)
    after = served(deployment.starter, total=sum(before.values()) + 32)
    assert set(after) == set(before)
    assert all(after[r] > before[r] for r in after), (before, after)  # both replicas served some
    assert sum(after.values()) - sum(before.values()) == 32
    nodes = {report.node_id for model in (deployment.starter, TINY) for report in replicas(model).values()}
    assert len(nodes) == 2  # the replicas run on both nodes of the cluster


def test_status_command_lists_deployments_and_replicas(ray_cluster, deployment) -> None:
    done = ray_cluster.command("status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["app_status"] == "RUNNING" and status["url"] == deployment.base_url
    assert {d["name"]: d["replicas"] for d in status["deployments"]} == {
        "Ingress": {"RUNNING": 1}, deployment.starter: {"RUNNING": 2}, TINY: {"RUNNING": 1}}
    assert sorted(r["model"] for r in status["replicas"]) == sorted([deployment.starter] * 2 + [TINY])
    assert all(r["running"] >= 0 and r["waiting"] >= 0 and r["tokens_per_s"] >= 0 for r in status["replicas"])
    table = ray_cluster.command("status").stdout
    assert "application lmstation: RUNNING" in table and "tok/s" in table and TINY in table


def opening(conversation: int) -> list[dict]:
    """A conversation's first messages, longer than one KV block (64 tokens) and its own from the first token."""
    system = (f"Conversation {conversation}. You are a patient tutor who explains arithmetic to children with "
              "short sentences, small numbers and friendly examples about apples, pears, marbles and trains. "
              "Always check the answer twice before you give it, and end with a question that invites the "
              "child to try a similar sum on their own.")
    return [{"role": "system", "content": system}, {"role": "user", "content": f"What is {conversation} plus 2?"}]


def test_a_conversation_stays_on_its_replica(deployment) -> None:
    """A second turn finds its first turn's prompt in the replica's prefix cache: it went to the same
    replica. Second turns go one at a time, onto idle replicas, so that without affinity each would
    find its replica by chance half the time (all eight, once in 256 runs)."""

    def second_turn(n: int, first: dict) -> list[dict]:
        return [*opening(n), {"role": "assistant", "content": first["text"]}, {"role": "user", "content": "And 3?"}]

    async def main():
        api = client(deployment)
        firsts = await asyncio.gather(*(stream_chat(api, deployment.starter, opening(n)) for n in range(8)))
        cached = [(await stream_chat(api, deployment.starter, second_turn(n, first)))["usage"]
                  for n, first in enumerate(firsts)]
        await api.close()
        return [usage.prompt_tokens_details.cached_tokens for usage in cached]

    cached = asyncio.run(main())
    assert all(tokens >= 64 for tokens in cached), cached


def home_of(deployment: Deployment, messages: list[dict]) -> str:
    """The replica a conversation's first request went to (and its later ones will, having room)."""
    before = served(deployment.starter)
    asyncio.run(_one_reply(deployment, messages))
    after = served(deployment.starter, total=sum(before.values()) + 1)
    (home,) = [r for r in after if after[r] > before.get(r, 0)]
    return home


async def _one_reply(deployment: Deployment, messages: list[dict]) -> None:
    api = client(deployment)
    await stream_chat(api, deployment.starter, messages)
    await api.close()


def test_killed_replica_fails_its_requests_and_is_replaced(deployment) -> None:
    """One conversation's requests all go to its replica, which is killed mid-stream: its streams end
    with an error event and its non-streamed request with a 503, in OpenAI's shape, while another
    conversation's on the other replica and the other model's complete; Serve starts a new
    replica, and new requests succeed."""
    import openai

    doomed = opening(100)
    victim = home_of(deployment, doomed)
    safe = next(opening(n) for n in range(101, 120) if home_of(deployment, opening(n)) != victim)
    victim_pid = replicas(deployment.starter)[victim].pid
    survivor_pid = next(report.pid for r, report in replicas(deployment.starter).items() if r != victim)

    async def streamed(api, model: str, messages: list[dict], max_tokens: int, started: asyncio.Event) -> str:
        try:
            stream = await api.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                       stream=True, extra_body={"ignore_eos": True})
            reason, chunks = None, 0
            async for chunk in stream:
                chunks += 1
                if chunks == 3:  # the role, then two pieces of text: generating
                    started.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    reason = chunk.choices[0].finish_reason
            return f"completed ({reason})"
        except openai.APIError as exc:
            return f"error: {exc.message}"

    async def unstreamed(api, messages: list[dict]) -> str:
        try:
            await api.chat.completions.create(model=deployment.starter, messages=messages, max_tokens=400,
                                              extra_body={"ignore_eos": True})
            return "completed"
        except openai.APIStatusError as exc:
            return f"{exc.status_code} {exc.body.get('code')}: {exc.body.get('message')}"

    async def main():
        api = client(deployment)
        started = [asyncio.Event() for _ in range(8)]
        doomed_streams = [asyncio.create_task(streamed(api, deployment.starter, doomed, 400, started[i]))
                          for i in range(8)]
        doomed_whole = asyncio.create_task(unstreamed(api, doomed))
        others = [asyncio.create_task(streamed(api, deployment.starter, safe, 48, asyncio.Event())) for _ in range(4)]
        others += [asyncio.create_task(streamed(api, TINY, [{"role": "user", "content": f"Tiny {i}: count."}], 48,
                                                asyncio.Event())) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 120)
        os.kill(victim_pid, signal.SIGKILL)
        results = await asyncio.gather(*doomed_streams, doomed_whole, *others)
        await api.close()
        return results[:8], results[8], results[9:]

    doomed_results, whole, other_results = asyncio.run(main())
    assert all(r.startswith("error: the replica serving this request stopped") for r in doomed_results), doomed_results
    assert whole.startswith("503 replica_died: the replica serving this request stopped"), whole
    assert other_results == ["completed (length)"] * 8

    deadline = time.monotonic() + 120  # Serve notices the death and starts (and loads) a new replica
    while time.monotonic() < deadline:
        pids = {report.pid for report in replicas(deployment.starter).values()}
        if len(pids) == 2 and victim_pid not in pids:
            break
        time.sleep(1)
    assert len(pids) == 2 and victim_pid not in pids and survivor_pid in pids, pids

    async def again():
        api = client(deployment)
        replies = await asyncio.gather(*(stream_chat(api, deployment.starter, opening(300 + n)) for n in range(8)),
                                       stream_chat(api, deployment.starter, doomed))
        await api.close()
        return replies

    assert all(r["reason"] == "length" and r["usage"].completion_tokens == NEW_TOKENS for r in asyncio.run(again()))


SERVING = ("ray::ServeReplica", "ray::ServeController", "ray::ProxyActor", "ray::Board")


def test_shutdown_leaves_no_ray_process(ray_cluster, deployment) -> None:
    """``lmstation cluster shutdown`` stops every process the deployment started (replicas, ingress,
    Serve's controller and proxy, the board); stopping Ray then leaves nothing at all."""
    # An actor's process title is its class, and the method it runs now, if any (".listen_for_change")
    serving = sorted(re.sub(r"\.[a-z_]+$", "", line.split()[0]) for line in ray_processes().values()
                     if line.startswith(SERVING))
    assert serving == ["ray::Board", "ray::ProxyActor", "ray::ServeController", *sorted(
        f"ray::ServeReplica:lmstation:{name}" for name in ["Ingress", TINY, deployment.starter, deployment.starter])]
    done = ray_cluster.command("shutdown")
    assert done.returncode == 0, done.stderr
    assert "application lmstation" in done.stderr and "Ray Serve" in done.stderr
    assert ray_processes_left(SERVING, ray_cluster.ray_before) == {}
    ray_cluster.stop()  # Ray itself, as `ray stop` would on each machine
    assert ray_processes_left(("",), ray_cluster.ray_before) == {}


def ray_processes_left(titles: tuple[str, ...], before: dict[int, str], timeout_s: float = 30) -> dict[int, str]:
    """The Ray processes started since ``before`` whose command lines start with one of ``titles``
    ("": any) once they are gone, or when the timeout has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = {pid: line for pid, line in ray_processes().items() if pid not in before and line.startswith(titles)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
