"""API keys from --api-key-file: 401 without or with a wrong key, 200 with one;
/health stays public; the official client authenticates with its api_key."""

import openai
import pytest

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    from conftest import Server

    key_file = tmp_path_factory.mktemp("keys") / "keys"
    key_file.write_text("# operators\nfirst-key\n\n  second-key  \n")
    s = Server("--api-key-file", str(key_file))
    yield s
    s.stop()


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer first-ke"},
    {"Authorization": "Bearer first-key-and-more"},
    {"Authorization": "Basic Zmlyc3Qta2V5"},
    {"X-Api-Key": "nope"},
], ids=["none", "wrong", "prefix", "longer", "basic", "x-api-key-wrong"])
def test_rejected(keyed, headers):
    for method, path, body in [("POST", "/v1/chat/completions", BODY), ("GET", "/v1/models", None),
                               ("GET", "/metrics", None)]:
        status, resp_headers, got = keyed.request(method, path, body, headers=headers)
        assert status == 401, got
        assert got["error"]["type"] == "authentication_error"
        assert "first-key" not in got["error"]["message"]
    assert keyed.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer first-key"},
    {"Authorization": "Bearer second-key"},
    {"Authorization": "bearer first-key"},
    {"Authorization": "BEARER second-key"},
    {"X-Api-Key": "first-key"},
], ids=["bearer-first", "bearer-second", "bearer-lower-case", "bearer-upper-case", "x-api-key"])
def test_accepted(keyed, headers):
    status, _, got = keyed.request("POST", "/v1/chat/completions", BODY, headers=headers)
    assert status == 200, got


def test_official_client(keyed):
    good = openai.OpenAI(base_url=keyed.base_url + "/v1", api_key="second-key", max_retries=0)
    model = good.models.list().data[0].id
    assert good.chat.completions.create(model=model, messages=BODY["messages"], max_tokens=2).usage.total_tokens > 0
    bad = openai.OpenAI(base_url=keyed.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
