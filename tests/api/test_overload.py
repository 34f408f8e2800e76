"""Admission control and cancellation: a flood beyond --max-queue gets 429 with
Retry-After and nothing but 200/429; a client that disconnects mid-stream stops
its generation (counted in /metrics)."""

import concurrent.futures
import json
import socket
import time

BODY = {"messages": [{"role": "user", "content": "Write a poem about the sea."}], "max_tokens": 6, "stream": True}


def stream_once(server):
    """Sends one streaming request; returns (status, retry_after, error_type, saw_done)."""
    conn = server.connection()
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(BODY),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read().decode()
        if resp.status != 200:
            return resp.status, resp.getheader("Retry-After"), json.loads(data)["error"]["type"], False
        return 200, None, None, data.rstrip().endswith("data: [DONE]")
    finally:
        conn.close()


def test_flood_gets_429_and_nothing_else(make_server):
    s = make_server("--max-queue", "2", "--parallel", "2")
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: stream_once(s), range(12)))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}, results
    assert statuses.count(429) >= 1, results
    assert statuses.count(200) >= 3, results  # a running one plus two queued at least
    for status, retry_after, kind, done in results:
        if status == 429:
            assert kind == "rate_limit_error"
            assert retry_after is not None and int(retry_after) >= 1
        else:
            assert done, "a stream did not end with data: [DONE]"
    assert s.metric("xpu_queue_depth") == 0
    # Still healthy and serving after the flood.
    assert stream_once(s)[0] == 200


def test_disconnect_cancels_generation(make_server):
    s = make_server()
    assert s.metric("xpu_cancellations_total") == 0
    body = dict(BODY, max_tokens=400, temperature=1.0, seed=7)
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    received = b""
    while received.count(b"data: ") < 4:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the stream early"
        received += chunk
    assert b" 200 " in received.split(b"\r\n")[0]
    sock.close()
    deadline = time.time() + 20
    while time.time() < deadline and s.metric("xpu_cancellations_total") < 1:
        time.sleep(0.05)
    assert s.metric("xpu_cancellations_total") == 1
    assert s.metric("xpu_generations_running") == 0
    # Far fewer than the 400 requested tokens were generated.
    assert s.metric("xpu_generated_tokens_total") < 200
    assert s.metric("xpu_requests_in_flight") == 0
