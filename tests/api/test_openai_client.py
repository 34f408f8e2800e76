"""The official `openai` Python client against the server: chat, streaming,
completions, models, usage, seed reproducibility and stop strings."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list_and_get(client, model_id):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_id]
    assert client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion_and_usage(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content.strip(), "empty answer"
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 8


def test_max_completion_tokens_limits_length(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_streaming_matches_non_streaming_and_reports_usage(client, model_id):
    kwargs = dict(model=model_id, messages=MESSAGES, max_tokens=8, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    # The last chunk carries the usage and no choices; the others carry usage null.
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_usage_has_no_usage_chunk(client, model_id):
    chunks = list(client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=3, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions(client, model_id):
    r = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.usage.completion_tokens <= 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    streamed = list(client.completions.create(
        model=model_id, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text
    assert streamed[-1].usage.completion_tokens == r.usage.completion_tokens


def test_seed_reproduces_sampled_text(client, model_id):
    kwargs = dict(model=model_id, messages=[{"role": "user", "content": "Tell me a word."}],
                  max_tokens=12, temperature=1.0, top_p=0.95)
    runs = [client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]
    others = {client.chat.completions.create(seed=s, **kwargs).choices[0].message.content for s in (1, 2, 3)}
    # Different seeds sample differently (at 12 tokens and temperature 1, all equal would mean the seed is ignored).
    assert len(others | {runs[0]}) > 1


def test_stop_string_ends_generation_and_is_not_returned(client, model_id):
    kwargs = dict(model=model_id, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0)
    free = client.completions.create(**kwargs).choices[0].text
    assert "7" in free, f"the model does not count on its own: {free!r}"
    stopped = client.completions.create(stop=["7"], **kwargs).choices[0]
    assert stopped.finish_reason == "stop"
    assert "7" not in stopped.text
    assert free.startswith(stopped.text)
    streamed = list(client.completions.create(stop="7", stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in streamed) == stopped.text


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES, max_tokens=2)
    assert e.value.body["type"] == "not_found_error"
    assert e.value.body["param"] == "model"


def test_n_greater_than_one_is_rejected_with_explanation(client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=2, n=2)
    assert e.value.body["param"] == "n"
    assert "one choice" in e.value.body["message"]


def test_concurrent_requests_give_what_they_give_alone(client, model_id):
    """Up to --parallel (4) requests generate together; greedy answers do not change."""
    prompts = ["Name three colours.", "Count to five.", "Say hello in French.", "What is 2+2?"]

    def ask(prompt):
        r = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0)
        return r.choices[0].message.content

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


def test_a_second_chat_turn_reports_cached_prompt_tokens(client, model_id):
    first = [{"role": "user", "content": "What is the capital of France?"}]
    a = client.chat.completions.create(model=model_id, messages=first, max_tokens=6, temperature=0)
    second = first + [
        {"role": "assistant", "content": a.choices[0].message.content},
        {"role": "user", "content": "And of Spain?"},
    ]
    b = client.chat.completions.create(model=model_id, messages=second, max_tokens=6, temperature=0)
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < b.usage.prompt_tokens
