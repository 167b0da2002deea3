"""Chat and text completions through the real openai client against a real ovms."""
from __future__ import annotations

import asyncio

import openai

from tests.fixtures.genai.dialogues import DIALOGUES, HELLO_ANSWER

MODEL = "tiny-llm"


def test_chat_completion_answers_the_trained_dialogues(client):
    for dialogue in DIALOGUES:
        if dialogue.get("tools"):
            continue
        response = client.chat.completions.create(model=MODEL, messages=dialogue["messages"], max_tokens=60)
        assert response.choices[0].message.content == dialogue["answer"]
        assert response.choices[0].finish_reason == "stop"
        assert response.choices[0].message.role == "assistant"
        assert response.object == "chat.completion" and response.model == MODEL
        assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
        assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_max_tokens_gives_length_finish(client):
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=2)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 2
    assert HELLO_ANSWER.startswith(response.choices[0].message.content)


def test_stop_string_truncates(client):
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to five"}],
                                              stop=[" three"], max_tokens=30)
    assert response.choices[0].message.content == "one two"
    assert response.choices[0].finish_reason == "stop"


def test_streaming_chat_deltas_concatenate_to_the_answer(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi in Japanese"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "こんにちは 👋 (konnichiwa)"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_completions_plain_and_streaming(client):
    response = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=12)
    assert response.choices[0].text.startswith(" jumps over the lazy dog.")
    assert response.object == "text_completion"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The quick brown fox", max_tokens=12, stream=True))
    assert streamed == response.choices[0].text
    echoed = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=12, echo=True)
    assert echoed.choices[0].text == "The quick brown fox" + response.choices[0].text


def test_async_client_concurrent_streams(base_url):
    async def main():
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            async def one():
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hello"}], stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return await asyncio.gather(*[one() for _ in range(16)])
    assert asyncio.run(main()) == [HELLO_ANSWER] * 16


def test_models_list_and_get(client):
    names = {m.id for m in client.models.list()}
    assert {"tiny-llm", "tiny-embedder", "tiny-reranker"} <= names
    assert client.models.retrieve(MODEL).id == MODEL


def test_n_choices_each_with_its_own_index_and_finish(client):
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], n=2,
                                              temperature=1.0, seed=7, max_tokens=8)
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content and c.finish_reason == "length" for c in response.choices)
    assert response.usage.completion_tokens == 16  # both sequences' tokens

    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], n=2,
                                                 temperature=1.0, seed=7, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine)
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"] and mine[-1].finish_reason
    assert chunks[-1].usage.completion_tokens == 16


def test_best_of_runs_beam_search_and_returns_the_best(client):
    greedy = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=20)
    beams = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=20, extra_body={"best_of": 2})
    assert len(beams.choices) == 1 and beams.choices[0].finish_reason == "stop"
    assert beams.choices[0].message.content == greedy.choices[0].message.content == HELLO_ANSWER


def test_logprobs_name_each_generated_token(client):
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                              logprobs=True, max_tokens=6)
    entries = response.choices[0].logprobs.content
    assert len(entries) == response.usage.completion_tokens == 6
    assert "".join(e.token for e in entries) == response.choices[0].message.content
    assert all(e.logprob <= 0 and bytes(e.bytes).decode() == e.token for e in entries)

    completion = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=5, logprobs=1,
                                           echo=True)
    choice = completion.choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text[len("The quick brown fox"):]
    assert choice.logprobs.text_offset[0] == len("The quick brown fox")
    assert [b - a for a, b in zip(choice.logprobs.text_offset, choice.logprobs.text_offset[1:])] == [
        len(t) for t in choice.logprobs.tokens[:-1]]
    assert len(choice.logprobs.token_logprobs) == 5 and all(lp <= 0 for lp in choice.logprobs.token_logprobs)


def test_a_stream_that_ends_early_ends_while_the_others_go_on(base_url):
    """Streams of different lengths share the pipeline's steps: each ends with its own count and reason, and
    the short ones are done long before the long ones (the worker notices an end within a couple of ms)."""
    async def main():
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            async def one(max_tokens: int):
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hello"}], stream=True, max_tokens=max_tokens,
                    extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
                finish = None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    if chunk.usage:
                        usage = chunk.usage.completion_tokens
                return finish, usage, asyncio.get_running_loop().time()
            return await asyncio.gather(*[one(n) for n in (3, 400, 3, 400, 20)])
    results = asyncio.run(main())
    assert [(finish, usage) for finish, usage, _ in results] == [
        ("length", 3), ("length", 400), ("length", 3), ("length", 400), ("length", 20)]
    ends = [at for _, _, at in results]
    assert max(ends[0], ends[2], ends[4]) < min(ends[1], ends[3])
