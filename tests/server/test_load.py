"""A bounded load test through the server: 64 concurrent streaming clients x 4 requests, every
reply complete and well-formed; then 32 clients leave mid-stream and the KV blocks come back."""

from __future__ import annotations

import asyncio

import pytest

from tests.server.helpers import wait_idle

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS, NEW_TOKENS = 64, 4, 8


def test_64_streaming_clients_then_32_leave(engine, server, model_name) -> None:
    from openai import AsyncOpenAI

    idle = wait_idle(engine)["free_cache_tokens"]

    async def client_session(client: AsyncOpenAI, n: int) -> list[tuple[str, str, int]]:
        done = []
        for r in range(REQUESTS):
            stream = await client.chat.completions.create(
                model=model_name, messages=[{"role": "user", "content": f"Client {n}, question {r}: count to ten."}],
                max_tokens=NEW_TOKENS, temperature=0.7, seed=n * 10 + r, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            text, reason, usage, ids = [], None, None, set()
            async for chunk in stream:
                ids.add(chunk.id)
                if chunk.choices:
                    text.append(chunk.choices[0].delta.content or "")
                    reason = chunk.choices[0].finish_reason or reason
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            assert len(ids) == 1
            done.append(("".join(text), reason, usage))
        return done

    async def leaver(client: AsyncOpenAI, n: int) -> None:
        stream = await client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": f"Client {n}: tell a long story."}],
            max_tokens=200, stream=True, extra_body={"ignore_eos": True})
        count = 0
        async for _ in stream:
            count += 1
            if count == 3:
                break
        await stream.close()

    async def main():
        client = AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=300)
        results = await asyncio.gather(*(client_session(client, n) for n in range(CLIENTS)))
        await asyncio.gather(*(leaver(client, n) for n in range(32)))
        await client.close()
        return results

    results = asyncio.run(main())
    replies = [reply for session in results for reply in session]
    assert len(replies) == CLIENTS * REQUESTS
    assert all(reason == "length" and usage == NEW_TOKENS and text for text, reason, usage in replies)
    assert wait_idle(engine, 30)["free_cache_tokens"] == idle
