"""Bad input over raw HTTP: every case must get the right status and OpenAI error
`type` (and `param` where one parameter is at fault), and the server must go on
answering afterwards."""

import json

import pytest

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]


def chat(**fields):
    body = {"messages": USER, "max_tokens": 2}
    body.update(fields)
    return body


# (id, method, path, body (dict = JSON, bytes = raw), status, type, param)
CASES = [
    ("truncated-json", "POST", CHAT, b'{"messages": [', 400, "invalid_request_error", None),
    ("empty-body", "POST", CHAT, b"", 400, "invalid_request_error", None),
    ("body-is-array", "POST", CHAT, b"[1, 2]", 400, "invalid_request_error", None),
    ("body-is-string", "POST", CHAT, b'"hello"', 400, "invalid_request_error", None),
    ("invalid-utf8", "POST", CHAT, b'{"messages": "\xff\xfe"}', 400, "invalid_request_error", None),
    ("deep-nesting", "POST", CHAT, b"[" * 10000 + b"]" * 10000, 400, "invalid_request_error", None),
    ("messages-missing", "POST", CHAT, {"max_tokens": 2}, 400, "invalid_request_error", "messages"),
    ("messages-not-array", "POST", CHAT, {"messages": "hi"}, 400, "invalid_request_error", "messages"),
    ("messages-empty", "POST", CHAT, {"messages": []}, 400, "invalid_request_error", "messages"),
    ("role-missing", "POST", CHAT, {"messages": [{"content": "hi"}]}, 400, "invalid_request_error", "messages[0].role"),
    ("role-unknown", "POST", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_request_error", "messages[0].role"),
    ("content-number", "POST", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_request_error", "messages[0].content"),
    ("content-image-part", "POST", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, 400, "invalid_request_error", "messages[0].content[0].type"),
    ("temperature-string", "POST", CHAT, chat(temperature="hot"), 400, "invalid_request_error", "temperature"),
    ("temperature-too-high", "POST", CHAT, chat(temperature=5), 400, "invalid_request_error", "temperature"),
    ("top-p-negative", "POST", CHAT, chat(top_p=-0.1), 400, "invalid_request_error", "top_p"),
    ("top-p-too-high", "POST", CHAT, chat(top_p=1.5), 400, "invalid_request_error", "top_p"),
    ("top-k-negative", "POST", CHAT, chat(top_k=-1), 400, "invalid_request_error", "top_k"),
    ("min-p-too-high", "POST", CHAT, chat(min_p=2), 400, "invalid_request_error", "min_p"),
    ("presence-penalty", "POST", CHAT, chat(presence_penalty=3), 400, "invalid_request_error", "presence_penalty"),
    ("frequency-penalty", "POST", CHAT, chat(frequency_penalty=-3), 400, "invalid_request_error", "frequency_penalty"),
    ("repetition-penalty-zero", "POST", CHAT, chat(repetition_penalty=0), 400, "invalid_request_error", "repetition_penalty"),
    ("max-tokens-zero", "POST", CHAT, chat(max_tokens=0), 400, "invalid_request_error", "max_tokens"),
    ("max-tokens-negative", "POST", CHAT, chat(max_tokens=-5), 400, "invalid_request_error", "max_tokens"),
    ("max-completion-tokens-string", "POST", CHAT, chat(max_completion_tokens="ten"), 400, "invalid_request_error", "max_completion_tokens"),
    ("n-three", "POST", CHAT, chat(n=3), 400, "invalid_request_error", "n"),
    ("stop-five-strings", "POST", CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, "invalid_request_error", "stop"),
    ("stop-empty-string", "POST", CHAT, chat(stop=[""]), 400, "invalid_request_error", "stop"),
    ("stop-number", "POST", CHAT, chat(stop=7), 400, "invalid_request_error", "stop"),
    ("seed-fraction", "POST", CHAT, chat(seed=1.5), 400, "invalid_request_error", "seed"),
    ("stream-string", "POST", CHAT, chat(stream="yes"), 400, "invalid_request_error", "stream"),
    ("stream-options-without-stream", "POST", CHAT, chat(stream_options={"include_usage": True}), 400, "invalid_request_error", "stream_options"),
    ("logprobs", "POST", CHAT, chat(logprobs=True), 400, "invalid_request_error", "logprobs"),
    ("tools", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "invalid_request_error", "tools"),
    ("response-format-json", "POST", CHAT, chat(response_format={"type": "json_object"}), 400, "invalid_request_error", "response_format"),
    ("model-unknown", "POST", CHAT, chat(model="gpt-4"), 404, "not_found_error", "model"),
    ("model-is-a-path", "POST", CHAT, chat(model="/etc/passwd"), 404, "not_found_error", "model"),
    ("prompt-missing", "POST", TEXT, {"max_tokens": 2}, 400, "invalid_request_error", "prompt"),
    ("prompt-batch", "POST", TEXT, {"prompt": ["a", "b"], "max_tokens": 2}, 400, "invalid_request_error", "prompt"),
    ("prompt-object", "POST", TEXT, {"prompt": {"text": "a"}}, 400, "invalid_request_error", "prompt"),
    ("prompt-token-out-of-vocab", "POST", TEXT, {"prompt": [1, 999999999], "max_tokens": 2}, 400, "invalid_request_error", "prompt"),
    ("suffix", "POST", TEXT, {"prompt": "a", "suffix": "b", "max_tokens": 2}, 400, "invalid_request_error", "suffix"),
    ("context-overflow", "POST", CHAT, {"messages": [{"role": "user", "content": "word " * 2000}]}, 400, "exceed_context_size_error", "messages"),
    ("unknown-route", "GET", "/v1/engines", None, 404, "not_found_error", None),
    ("path-traversal-route", "GET", "/v1/../../etc/passwd", None, 404, "not_found_error", None),
    ("model-get-unknown", "GET", "/v1/models/other", None, 404, "not_found_error", "model"),
    ("wrong-method", "GET", CHAT, None, 405, "invalid_request_error", None),
    ("body-too-large", "POST", CHAT, b'{"messages": [{"role": "user", "content": "' + b"x" * (3 * 1024 * 1024) + b'"}]}', 413, "invalid_request_error", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(server, case):
    _, method, path, body, status, kind, param = case
    raw = isinstance(body, bytes)
    got_status, headers, got = server.request(method, path, body=body, raw=raw)
    assert got_status == status, got
    assert headers.get("content-type", headers.get("Content-Type", "")).startswith("application/json")
    assert isinstance(got, dict) and "error" in got, got
    error = got["error"]
    assert error["type"] == kind, error
    assert error["message"], error
    if param is not None:
        assert error["param"] == param, error
    # The server goes on answering.
    health_status, _, health = server.request("GET", "/health")
    assert health_status == 200, health


def test_context_overflow_gives_sizes(server):
    status, _, got = server.request("POST", CHAT, {"messages": [{"role": "user", "content": "word " * 2000}]})
    assert status == 400
    assert got["error"]["n_ctx"] == 512
    assert got["error"]["n_prompt_tokens"] > 512
    assert str(got["error"]["n_prompt_tokens"]) in got["error"]["message"]


def test_suite_leaves_a_working_server(server):
    status, _, got = server.request("POST", CHAT, chat(max_tokens=2, temperature=0))
    assert status == 200, got
    assert got["usage"]["completion_tokens"] >= 1


def test_unknown_fields_are_ignored(server):
    status, _, got = server.request("POST", CHAT, chat(user="u1", parallel_tool_calls=False, metadata={"a": "b"}))
    assert status == 200, got


def test_cors_is_off_by_default(server):
    status, headers, _ = server.request("GET", "/v1/models", headers={"Origin": "http://evil.example"})
    assert status == 200
    assert not any(k.lower() == "access-control-allow-origin" for k in headers)
