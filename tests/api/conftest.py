"""Fixtures for the HTTP API suite: start the real `xpu-runner serve` binary on a
free port with the real test model, wait for /health, and stop it afterwards.

Env: XPU_RUNNER_BIN (the binary) and XPU_TEST_MODEL (the GGUF), both set by
scripts/test-api.sh.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

# A hung server fails the test instead of stalling CI.
REQUEST_TIMEOUT = 120
START_TIMEOUT = 120


def _require_env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set; run the suite through scripts/test-api.sh")
    return value


class Server:
    """One `xpu-runner serve` process, listening on a port the OS picked."""

    def __init__(self, *args, env=None, wait_ready=True, device="cpu"):
        self.log = tempfile.NamedTemporaryFile(prefix="xpu-serve-", suffix=".log", delete=False)
        cmd = [
            _require_env("XPU_RUNNER_BIN"), "serve",
            "--model", _require_env("XPU_TEST_MODEL"),
            "--port", "0", "--device", device, "--ctx", "512",
            *args,
        ]
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "info")
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.port = self._wait_for_port()
        if wait_ready:
            self.wait_ready()

    def output(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def _wait_for_port(self):
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            match = re.search(r"listening on http://[^\s:]+:(\d+)", self.output())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise RuntimeError(f"server did not report its port:\n{self.output()}")

    def wait_ready(self):
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            try:
                status, _, _ = self.request("GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {START_TIMEOUT} s:\n{self.output()}")

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def connection(self, timeout=REQUEST_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=False):
        """Returns (status, headers, parsed JSON or text)."""
        conn = self.connection()
        try:
            if body is not None and not raw:
                body = json.dumps(body)
            hdrs = {"Content-Type": "application/json"}
            hdrs.update(headers or {})
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", errors="replace")
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data
            return resp.status, dict(resp.getheaders()), parsed
        finally:
            conn.close()

    def metric(self, name, headers=None):
        """The value of an unlabelled metric line in /metrics."""
        status, _, text = self.request("GET", "/metrics", headers=headers)
        assert status == 200, text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"metric {name} not found in:\n{text}")

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def make_server():
    started = []

    def start(*args, **kwargs):
        s = Server(*args, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def model_id(server):
    status, _, body = server.request("GET", "/v1/models")
    assert status == 200, body
    return body["data"][0]["id"]
