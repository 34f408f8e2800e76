"""The dashboard page in a real browser: Debian's headless Chromium driven through
chromedriver by Selenium, against the real `xpu-runner serve` with the real model.

Hardware facts for the Intel and CPU-only cases come from the real `xpu-probe`
(XPU_PROBE_BIN, set by scripts/test-api.sh) run on the probe's fixture trees. The
screenshots go to XPU_SCREENSHOT_DIR (default: target/ of the repository), which CI
keeps as artefacts.
"""

import json
import os
import pathlib
import shutil
import subprocess

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import Server

REPO = pathlib.Path(__file__).resolve().parents[2]
# Generous: CI machines have two cores, and a reply of 40 tokens can take a while there.
WAIT = 240
XSS_ID = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">smol'


def _find(env, names):
    path = os.environ.get(env)
    if path:
        return path
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"{env} is not set and none of {names} is on PATH; install chromium and chromium-driver "
                "(scripts/apt-packages.txt)")


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = _find("XPU_CHROMIUM", ["chromium", "chromium-browser"])
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1500", "--force-device-scale-factor=1", "--lang=en-US"]:
        options.add_argument(arg)
    # The page and its server are all there is: no network, no downloads of drivers.
    service = Service(executable_path=_find("XPU_CHROMEDRIVER", ["chromedriver"]))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def facts_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("facts")


def probe_facts(facts_dir, fixture):
    """The facts `xpu-probe` writes for one of its fixture trees."""
    probe = os.environ.get("XPU_PROBE_BIN")
    if not probe:
        pytest.fail("XPU_PROBE_BIN is not set; run the suite through scripts/test-api.sh")
    out = facts_dir / f"{fixture}.json"
    subprocess.run([probe, "--root", str(REPO / "probe/tests/fixtures" / fixture), "--no-level-zero",
                    "-o", str(out)], check=True, timeout=60)
    return out


def screenshot(driver, name):
    directory = pathlib.Path(os.environ.get("XPU_SCREENSHOT_DIR", REPO / "target"))
    directory.mkdir(parents=True, exist_ok=True)
    # The whole page, not just the window: the window is the page's height plus the
    # browser's own frame.
    frame = driver.get_window_size()["height"] - driver.execute_script("return window.innerHeight")
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1440, max(900, height + frame))
    path = directory / name
    assert driver.save_screenshot(str(path)), f"cannot write {path}"
    return path


def wait(driver, condition, what):
    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def text(driver, element_id):
    elements = driver.find_elements(By.ID, element_id)
    return elements[0].text if elements else None


def open_page(driver, server, path="/"):
    driver.get(server.base_url + path)
    wait(driver, lambda d: text(d, "model-id"), "the page shows no model id")


def dashboard_doc(server, headers=None):
    status, _, doc = server.request("GET", "/v1/dashboard", headers=headers)
    assert status == 200, doc
    return doc


def chat(driver, message, max_tokens=64):
    """Sends `message` in the chat panel and returns the lengths of the reply's text
    as the page updated it, and the final reply element."""
    # Records the reply's length at every change, however fast the tokens come.
    driver.execute_script("""
        window.__lengths = [];
        const log = document.getElementById('chat-log');
        window.__observer = new MutationObserver(() => {
          const replies = log.querySelectorAll('.msg.assistant .text');
          const last = replies[replies.length - 1];
          if (last) window.__lengths.push(last.textContent.length);
        });
        window.__observer.observe(log, {subtree: true, childList: true, characterData: true});
    """)
    box = driver.find_element(By.ID, "chat-max")
    box.clear()
    box.send_keys(str(max_tokens))
    driver.find_element(By.ID, "chat-input").send_keys(message)
    driver.find_element(By.ID, "chat-send").click()
    reply = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state=done], "
                                                   ".msg.assistant[data-state=failed]"), "no reply finished")[-1]
    assert reply.get_attribute("data-state") == "done", reply.text
    lengths = driver.execute_script("window.__observer.disconnect(); return window.__lengths;")
    return lengths, reply


def test_page_shows_model_device_figures_and_streams_a_chat(browser, make_server):
    server = make_server("--model-id", XSS_ID, "--no-gpu-telemetry")
    open_page(browser, server)

    # A model id with markup in it is shown as text and runs nothing.
    assert text(browser, "model-id") == XSS_ID
    assert text(browser, "top-model") == XSS_ID
    assert browser.execute_script("return window.__xss === undefined")
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src=x]")

    assert text(browser, "engine-device") == "cpu"
    assert text(browser, "status") == "ready"
    assert text(browser, "requests-total") == "0"
    # The KV cache: --parallel slots of --ctx (512) tokens each.
    _, _, health = server.request("GET", "/health")
    assert text(browser, "kv").endswith(f"/ {512 * health['parallel']['slots']}")
    assert "Q4_1" in text(browser, "model") and "llama" in text(browser, "model")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart polyline")
    assert text(browser, "telemetry-na") == "GPU memory, temperature and power: not available on this hardware."

    # The Intel GPU engine is offered exactly when the probe found an Intel GPU:
    # on a CPU-only machine (this one, CI) it is not in the page at all.
    doc = dashboard_doc(server)
    wait(browser, lambda d: d.find_elements(By.ID, "variant"), "the machine's facts never showed")
    # No missing value is ever written as "null" or "undefined".
    page_text = browser.find_element(By.TAG_NAME, "main").text
    assert "null" not in page_text and "undefined" not in page_text, page_text
    intel = browser.find_elements(By.ID, "intel-engine")
    vulkan = browser.find_elements(By.CSS_SELECTOR, "#engines li[data-device=vulkan]")
    assert bool(intel) == bool(vulkan) == doc["intel_gpu"], doc["engines"]

    # Figures change after a request made outside the page.
    status, _, body = server.request("POST", "/v1/completions", {"prompt": "The sky is", "max_tokens": 8})
    assert status == 200, body
    wait(browser, lambda d: text(d, "requests-total") == "1", "the request count did not change")
    wait(browser, lambda d: text(d, "last-gen").startswith("Last reply:"), "no last reply figures")
    assert text(browser, "ttft") != "–"
    assert "200: 1" in text(browser, "by-status")

    # The chat panel streams: the reply grows in steps, then shows its speed.
    lengths, reply = chat(browser, "Write a long story about a robot who learns to paint.", max_tokens=40)
    growing = sorted(set(n for n in lengths if n > 0))
    assert len(growing) >= 2, f"the reply arrived in one piece: {lengths}"
    assert reply.find_element(By.CLASS_NAME, "text").text.strip()
    assert "tok/s" in reply.find_element(By.CLASS_NAME, "meta").text
    wait(browser, lambda d: text(d, "requests-total") == "2", "the chat request was not counted")
    screenshot(browser, "dashboard-cpu.png")


def test_split_over_two_devices_shows_its_device_map(browser, make_server):
    """The Vulkan engine with SmolLM2's layers split over two devices of one adapter
    (lavapipe in CI): the device map in /health, /v1/dashboard and the page."""
    help_text = subprocess.run([os.environ["XPU_RUNNER_BIN"], "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    if "--devices" not in help_text:
        pytest.skip("this runner is built without the vulkan feature")
    server = make_server("--devices", "0,0", "--split", "2,1", "--allow-cpu-adapter", "--no-gpu-telemetry",
                         device="vulkan")
    _, _, health = server.request("GET", "/health")
    devices = health["devices"]
    assert [d["layers"] for d in devices] == [[0, 20], [20, 30]], devices
    assert devices[0]["embedding"] and not devices[0]["output"]
    assert devices[1]["output"] and not devices[1]["embedding"]
    assert [d["status"] for d in devices] == ["ok", "ok"] and health["status"] == "ok"
    status, _, body = server.request("POST", "/v1/completions", {"prompt": "The sky is", "max_tokens": 4})
    assert status == 200, body
    assert dashboard_doc(server)["devices"] == server.request("GET", "/health")[2]["devices"]

    open_page(browser, server)
    items = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#device-map li"), "no device map on the page")
    assert len(items) == 2
    assert "layers 0–19" in items[0].text and "embedding" in items[0].text, items[0].text
    assert "layers 20–29" in items[1].text and "output head" in items[1].text, items[1].text
    assert all(i.get_attribute("data-status") == "ok" for i in items)
    screenshot(browser, "dashboard-split.png")


def test_intel_gpu_engine_appears_with_intel_facts(browser, make_server, facts_dir):
    facts = probe_facts(facts_dir, "arc-a770-igpu")
    server = make_server("--facts", str(facts), "--no-gpu-telemetry")
    open_page(browser, server)
    section = wait(browser, lambda d: d.find_elements(By.ID, "intel-engine"), "no Intel GPU engine section")[0]
    assert "Intel GPU engine" in section.text
    assert "Arc A770" in section.text
    assert browser.find_elements(By.CSS_SELECTOR, "#engines li[data-device=vulkan]")
    assert text(browser, "variant") == "exo-intel"
    gpus = browser.find_element(By.ID, "gpus").text
    assert "Alchemist" in gpus and "i915" in gpus and "/dev/dri/renderD" in gpus
    # The model suits the A770 (its 16 GiB BAR) as well as the CPU.
    assert "fits" in browser.find_element(By.ID, "suits").text

    # One exchange, so that the screenshot shows live figures and a streamed reply.
    chat(browser, "What is a GPU? Answer in two sentences.", max_tokens=40)
    wait(browser, lambda d: text(d, "last-gen").startswith("Last reply:"), "no last reply figures")
    path = screenshot(browser, "dashboard.png")
    assert path.stat().st_size > 10_000


def test_no_intel_option_on_a_machine_without_intel_gpu(browser, make_server, facts_dir):
    facts = probe_facts(facts_dir, "aspeed-only")
    server = make_server("--facts", str(facts), "--no-gpu-telemetry")
    open_page(browser, server)
    wait(browser, lambda d: text(d, "variant") == "exo-cpu", "the CPU-only facts never showed")
    assert not browser.find_elements(By.ID, "intel-engine")
    assert [e.get_attribute("data-device") for e in browser.find_elements(By.CSS_SELECTOR, "#engines li")] == ["cpu"]


def test_api_key_unlocks_the_document_and_the_chat(browser, make_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("page-key\n")
    server = make_server("--api-key-file", str(keys), "--no-gpu-telemetry")
    # The page loads without the key; its data does not.
    browser.get(server.base_url + "/dashboard")
    wait(browser, lambda d: text(d, "status") == "API key needed", "the page did not ask for a key")
    assert "API key" in text(browser, "notice")
    assert not browser.find_elements(By.ID, "model-id")
    assert server.request("GET", "/v1/dashboard")[0] == 401

    browser.find_element(By.ID, "api-key").send_keys("page-key")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait(browser, lambda d: text(d, "model-id"), "the key did not unlock the document")
    assert text(browser, "status") == "ready"
    assert not browser.find_element(By.ID, "notice").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('xpu-runner-api-key')") == "page-key"
    _, reply = chat(browser, "Say hello.", max_tokens=16)
    assert reply.find_element(By.CLASS_NAME, "text").text.strip()
    doc = dashboard_doc(server, headers={"Authorization": "Bearer page-key"})
    assert doc["live"]["requests_by_status"] == {"200": 1}, json.dumps(doc["live"])
