"""The server through the official openai client on 127.0.0.1, with the starter model."""

from __future__ import annotations

import openai
import pytest
from transformers import AutoTokenizer

from tests.server.helpers import post

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_loaded_model(client, model_name) -> None:
    assert [m.id for m in client.models.list().data] == [model_name]
    assert client.models.retrieve(model_name).id == model_name


def test_chat_answers_paris_with_usage_matching_the_tokenizer(client, model_name, starter_model) -> None:
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=30)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    tokenizer = AutoTokenizer.from_pretrained(starter_model)
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(prompt)
    completion = tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    # the reply's text re-tokenized, plus the end-of-turn token when the model stopped by itself
    assert reply.usage.completion_tokens == len(completion) + (choice.finish_reason == "stop")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chat_is_the_same_reply(client, model_name) -> None:
    whole = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and "Paris" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_completions(client, model_name) -> None:
    reply = client.completions.create(model=model_name, prompt="The capital of France is", temperature=0, max_tokens=5)
    assert "Paris" in reply.choices[0].text and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model_name, prompt="The capital of France is", temperature=0, max_tokens=5, stream=True))
    assert streamed == reply.choices[0].text


def test_stop_strings(client, model_name) -> None:
    free = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=30)
    text = free.choices[0].message.content
    assert "Paris" in text
    cut = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=30,
                                         stop=["Paris"])
    assert cut.choices[0].message.content == text[: text.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_reproduces_a_sampled_reply(client, model_name) -> None:
    ask = dict(model=model_name, messages=[{"role": "user", "content": "Write a short poem about the sea."}],
               temperature=1.0, max_tokens=24)
    first = client.chat.completions.create(seed=1234, **ask).choices[0].message.content
    assert client.chat.completions.create(seed=1234, **ask).choices[0].message.content == first
    others = {client.chat.completions.create(seed=s, **ask).choices[0].message.content for s in (1, 2, 3)}
    assert others - {first}


def test_logprobs(client, model_name) -> None:
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=6,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token  # greedy: the likeliest token was taken
        assert abs(item.top_logprobs[0].logprob - item.logprob) < 1e-5
        assert [t.logprob for t in item.top_logprobs] == sorted((t.logprob for t in item.top_logprobs), reverse=True)
    assert "".join(item.token for item in content).startswith(reply.choices[0].message.content[:5])
    plain = client.completions.create(model=model_name, prompt="The capital of France is", temperature=0, max_tokens=3,
                                      logprobs=2)
    assert len(plain.choices[0].logprobs.tokens) == 3 and all(len(t) == 2 for t in plain.choices[0].logprobs.top_logprobs)


def test_errors_in_openai_shape(client, model_name, server) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "word " * 10000}])
    assert long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as wrong_type:
        client.chat.completions.create(model=model_name, messages=QUESTION, temperature="hot")
    assert wrong_type.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as penalty:
        client.chat.completions.create(model=model_name, messages=QUESTION, presence_penalty=0.5)
    assert penalty.value.body["param"] == "presence_penalty"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_name, messages=QUESTION, n=2)
    status, body = post(server.base_url + "/chat/completions", b'{"model": "x", "messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and "JSON" in body["error"]["message"]
    status, body = post(server.base_url + "/chat/completions", b'{"model": "' + b"x" * 70000 + b'"}')
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = post(server.base_url + "/no/such/path", b"{}")
    assert status == 404 and "error" in body


def test_the_log_records_requests(server, client, model_name) -> None:
    before = len(server.log)
    client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=3)
    record = server.log[before]
    assert record["status"] == 200 and record["client"] == "127.0.0.1" and record["completion_tokens"] == 3

