// The xpu-runner dashboard. Reads GET /v1/dashboard every two seconds and chats
// through POST /v1/chat/completions (streamed). Every value from the server goes into
// the page as text (textContent, text nodes, attributes): model ids and device names
// come from files and users.
"use strict";

const POLL_MS = 2000;
const KEY_STORAGE = "xpu-runner-api-key";
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
  modelId: null,
  messages: [],
  chatAbort: null,
  timer: null,
};

// ---- small DOM helpers -------------------------------------------------------

function $(id) {
  return document.getElementById(id);
}

/** An element with attributes and children; strings become text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setText(id, text) {
  $(id).textContent = text;
}

function clear(node) {
  node.replaceChildren();
  return node;
}

function badge(text, kind) {
  return el("span", { class: "badge " + kind }, text);
}

/** Rows of a <dl>: [label, value] pairs; a null value is left out. */
function fillFacts(node, rows) {
  clear(node);
  for (const [label, value] of rows) {
    if (value === null || value === undefined || value === "") continue;
    node.append(el("dt", {}, label), el("dd", {}, value));
  }
}

// ---- formatting ---------------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return null;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
}

function count(n) {
  if (n === null || n === undefined) return null;
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " B";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return String(n);
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(2) + " s";
}

function rate(r) {
  return r === null || r === undefined ? "–" : r < 10 ? r.toFixed(2) : r.toFixed(1);
}

// ---- talking to the server -----------------------------------------------------

function authHeaders() {
  return state.apiKey ? { Authorization: "Bearer " + state.apiKey } : {};
}

/** The error message of an OpenAI-style error body, or the status line. */
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) {
    // Not JSON; fall through.
  }
  return "HTTP " + response.status + " " + response.statusText;
}

function showNotice(text) {
  const notice = $("notice");
  notice.hidden = !text;
  notice.textContent = text || "";
}

function setStatus(word, stateName) {
  const pill = $("status");
  pill.textContent = word;
  pill.dataset.state = stateName;
}

async function poll() {
  try {
    const response = await fetch("/v1/dashboard", { headers: authHeaders(), cache: "no-store" });
    if (response.status === 401) {
      setStatus("API key needed", "locked");
      showNotice("This server needs an API key: enter it at the top right. " + (await errorMessage(response)));
      $("api-key").placeholder = "required";
      return;
    }
    if (!response.ok) {
      setStatus("error", "error");
      showNotice("Cannot read /v1/dashboard: " + (await errorMessage(response)));
      return;
    }
    const doc = await response.json();
    showNotice(null);
    render(doc);
  } catch (error) {
    setStatus("offline", "error");
    showNotice("The server does not answer (" + error.message + "); retrying.");
  }
}

function schedulePolling() {
  clearInterval(state.timer);
  poll();
  state.timer = setInterval(poll, POLL_MS);
}

// ---- rendering ------------------------------------------------------------------

function render(doc) {
  setStatus(doc.status, doc.status);
  setText("version", "v" + doc.server.version);
  $("api-key").placeholder = doc.server.api_key_required ? "required" : "not needed";
  state.modelId = doc.model ? doc.model.id : null;
  setText("top-model", state.modelId || "loading model…");
  renderLive(doc);
  renderEngine(doc);
  renderModel(doc);
  renderMachine(doc);
  renderTelemetry(doc);
}

function renderLive(doc) {
  const live = doc.live;
  setText("tok-s", rate(live.tokens_per_second));
  setText("running", String(live.requests_running));
  setText("queued", String(live.requests_queued));
  setText("requests-total", String(live.requests_total));
  const statuses = Object.entries(live.requests_by_status).map(([code, n]) => code + ": " + n);
  setText("by-status", statuses.length ? statuses.join(" · ") : "none yet");
  const ttft = live.time_to_first_token;
  setText("ttft", seconds(ttft.last_s));
  setText("ttft-mean", ttft.count ? "mean " + seconds(ttft.mean_s) : "no requests yet");
  $("ttft-mean").title = ttft.count + " requests";
  const kv = live.kv_cache;
  if (kv) {
    setText("kv", kv.tokens + " / " + kv.capacity_tokens);
    setText("kv-sub", kv.sequences ? kv.sequences + " of " + kv.max_sequences + " sequences" : "idle");
  } else {
    setText("kv", "–");
    setText("kv-sub", "model loading");
  }
  const last = live.last_generation;
  setText(
    "last-gen",
    last
      ? "Last reply: " + last.completion_tokens + " tokens at " + rate(last.tokens_per_second) +
          " tok/s, first token after " + seconds(last.time_to_first_token_s) + " (prompt " +
          last.prompt_tokens + " tokens). Totals: " + live.prompt_tokens_total + " prompt tokens, " +
          live.generated_tokens_total + " generated."
      : "No generation yet. Send a message in the chat, or use the API."
  );
  drawChart(live.history);
}

function drawChart(points) {
  const svg = clear($("chart"));
  const width = 600;
  const height = 140;
  const max = Math.max(1, ...points.map((p) => p.tokens_per_second));
  // A round top for the scale: 1, 2, 5, 10, 20, 50 ...
  const step = Math.pow(10, Math.floor(Math.log10(max)));
  const top = [1, 2, 5, 10].map((m) => m * step).find((v) => v >= max);
  setText("chart-max", "scale 0 – " + top + " tok/s");
  for (const fraction of [0.25, 0.5, 0.75]) {
    const y = height - fraction * height;
    const line = document.createElementNS(SVG_NS, "line");
    for (const [k, v] of [["x1", 0], ["x2", width], ["y1", y], ["y2", y], ["class", "grid-line"]]) line.setAttribute(k, v);
    svg.append(line);
  }
  if (points.length < 2) return;
  const x = (i) => (i / (points.length - 1)) * width;
  const y = (v) => height - (v / top) * (height - 4);
  const coords = points.map((p, i) => x(i).toFixed(1) + "," + y(p.tokens_per_second).toFixed(1));
  const area = document.createElementNS(SVG_NS, "polygon");
  area.setAttribute("points", "0," + height + " " + coords.join(" ") + " " + width + "," + height);
  area.setAttribute("class", "area");
  const line = document.createElementNS(SVG_NS, "polyline");
  line.setAttribute("points", coords.join(" "));
  line.setAttribute("class", "line");
  svg.append(area, line);
}

function renderEngine(doc) {
  const engine = doc.engine;
  fillFacts($("engine"), engine
    ? [
        ["Device", el("span", { class: "mono", id: "engine-device" }, engine.device)],
        ["Adapter", engine.description],
        ["Requested", "--device " + engine.requested],
        ["Why", engine.reasons.length ? el("ul", { class: "list" }, engine.reasons.map((r) => el("li", {}, r))) : null],
        ["Fallback", engine.fallback_reason ? el("span", { class: "warn-text" }, engine.fallback_reason) : null],
        ["GPUs", deviceMap(doc.devices)],
      ]
    : [["Device", "the model is loading"]]);

  const list = clear($("engines"));
  for (const option of doc.engines) {
    const tags = [];
    if (option.in_use) tags.push(badge("in use", "good"));
    else if (option.compiled_in) tags.push(badge("available: --device " + option.device, "plain"));
    else tags.push(badge("not in this build", "warn"));
    list.append(
      el("li", { class: option.in_use ? "in-use" : null, "data-device": option.device },
        el("div", { class: "name" }, option.label, tags),
        el("div", { class: "hw" }, option.hardware.join(", ")))
    );
  }

  // The Intel GPU engine: only where the facts show an Intel GPU.
  const slot = clear($("intel-slot"));
  if (doc.intel_gpu && doc.facts) {
    const intelGpus = (doc.facts.gpus || []).filter((g) => g.vendor === "intel" && g.compute_capable);
    const inUse = engine && engine.device === "vulkan";
    slot.append(
      el("div", { class: "intel", id: "intel-engine" },
        el("h3", {}, "Intel GPU engine", badge(inUse ? "in use" : "available", inUse ? "good" : "info")),
        el("div", {}, inUse
          ? "The model runs on the Intel GPU through the Vulkan engine."
          : ["This machine has an Intel GPU. To run models on it, start the server with ",
             el("code", {}, "--device vulkan"), " or ", el("code", {}, "--device auto"), "."]),
        el("ul", {}, intelGpus.map((g) =>
          el("li", {}, (g.name || "Intel GPU") + " · " + (g.family || "unknown family") + " · driver " + (g.driver || "none"))))
      )
    );
  }
}

// Which GPU runs which layers (a split names several), and whether each still works.
function deviceMap(devices) {
  if (!devices || !devices.length) return null;
  return el("ul", { class: "list", id: "device-map" }, devices.map((d) => {
    const parts = ["layers " + d.layers[0] + "–" + (d.layers[1] - 1)];
    if (d.embedding) parts.push("embedding");
    if (d.output) parts.push("output head");
    parts.push(bytes(d.weight_bytes) + " weights", bytes(d.kv_cache_bytes) + " KV cache");
    return el("li", { "data-status": d.status },
      el("span", { class: "mono" }, String(d.index) + (d.pci_address ? " (" + d.pci_address + ")" : "")),
      " " + d.adapter + " · " + parts.join(" · ") + " ",
      d.status === "ok" ? badge("ok", "good") : badge("lost: " + d.error, "warn"));
  }));
}

function renderModel(doc) {
  const model = doc.model;
  const tbody = clear($("suits").tBodies[0]);
  if (!model) {
    fillFacts($("model"), [["Status", "loading"]]);
    setText("suits-note", "");
    return;
  }
  fillFacts($("model"), [
    ["Id", el("span", { class: "mono", id: "model-id" }, model.id)],
    ["Architecture", model.architecture],
    ["Quantization", model.quantization],
    ["Parameters", count(model.parameters)],
    ["Context", model.context_length + " tokens"],
    ["Layers", model.layers],
    ["Weights", bytes(model.weights_bytes)],
    ["Needs", model.memory_needed_bytes ? "≈ " + bytes(model.memory_needed_bytes) : null],
  ]);
  for (const place of model.suits || []) {
    const fits = place.fits === true ? badge("fits", "good") : place.fits === false ? badge("too large", "bad") : badge("unknown", "plain");
    const engineNote = place.device ? null : el("div", { class: "hw muted" }, "no xpu engine for this GPU");
    tbody.append(
      el("tr", {},
        el("td", {}, place.name, engineNote),
        el("td", {}, place.memory_bytes !== null ? bytes(place.memory_bytes) : "unknown", el("div", { class: "muted" }, place.memory_source)),
        el("td", {}, fits))
    );
  }
  setText("suits-note", model.suits
    ? "Estimate: weights + KV cache for the whole context + 10 %."
    : "No hardware facts, so no devices to compare with.");
}

function renderMachine(doc) {
  const facts = doc.facts;
  const tbody = clear($("gpus").tBodies[0]);
  const rec = clear($("recommendation"));
  if (!facts) {
    fillFacts($("machine"), [["Facts", doc.facts_error ? "not available: " + doc.facts_error : "reading…"]]);
    return;
  }
  // A facts file from another probe version may lack fields: show what is there.
  const gpus = facts.gpus || [];
  if (gpus.length === 0) {
    tbody.append(el("tr", {}, el("td", { colspan: 5, class: "na" }, "no GPU found")));
  }
  for (const gpu of gpus) {
    tbody.append(
      el("tr", { "data-vendor": gpu.vendor },
        el("td", {}, gpu.name || "unnamed", el("div", { class: "muted mono" }, gpu.pci_address + " · " + gpu.vendor + (gpu.integrated ? " · integrated" : ""))),
        el("td", {}, gpu.family || "–"),
        el("td", {}, gpu.driver || "none"),
        el("td", { class: "mono" }, gpu.render_node || "–"),
        el("td", {}, gpu.compute_capable ? badge("yes", "good") : badge("no", "plain")))
    );
  }
  const cpu = facts.cpu;
  fillFacts($("machine"), [
    ["CPU", cpu ? (cpu.model_name || cpu.vendor || "unknown") : "unknown"],
    ["Cores", cpu ? cpu.cores + " cores, " + cpu.threads + " threads" : null],
    ["Memory", facts.memory ? bytes(facts.memory.total_bytes) : "unknown"],
    ["Kernel", facts.kernel ? facts.kernel.release : null],
    ["Virtualization", facts.virtualization],
    ["Container", facts.container],
  ]);
  const r = facts.recommendation || {};
  const reasons = r.reasons || [];
  const warnings = r.warnings || [];
  const kernelParams = r.kernel_params || [];
  rec.append(
    el("div", {},
      el("h3", {}, "Recommended variant ", el("span", { class: "badge info", id: "variant" }, r.variant || "none")),
      el("ul", { class: "list" }, reasons.map((x) => el("li", {}, x))),
      warnings.length ? el("ul", { class: "list warn-text" }, warnings.map((x) => el("li", {}, x))) : null,
      kernelParams.length ? el("p", { class: "foot" }, "Kernel parameters to add: " + kernelParams.join(" ")) : null)
  );
}

function renderTelemetry(doc) {
  const box = clear($("telemetry"));
  const reading = doc.gpu_telemetry;
  if (!reading || !reading.devices || reading.devices.length === 0) {
    box.append(el("p", { class: "na", id: "telemetry-na" }, "GPU memory, temperature and power: not available on this hardware."));
    return;
  }
  for (const d of reading.devices) {
    const used = d.memory_used_bytes;
    const total = d.memory_total_bytes;
    const meter = el("div", { class: "meter" }, el("div", {}));
    if (used !== null && total) meter.firstChild.style.width = Math.min(100, (100 * used) / total).toFixed(1) + "%";
    box.append(
      el("div", { class: "dev" },
        el("div", { class: "name" }, d.name + (d.pci_address ? " (" + d.pci_address + ")" : "")),
        el("dl", { class: "facts" },
          el("dt", {}, "Memory"),
          el("dd", {}, used !== null && total ? bytes(used) + " of " + bytes(total) : "not reported"),
          el("dt", {}, "Temperature"),
          el("dd", {}, d.temperature_c !== null ? d.temperature_c.toFixed(1) + " °C" : "not reported"),
          el("dt", {}, "Power"),
          el("dd", {}, d.power_w !== null ? d.power_w.toFixed(1) + " W" : "not reported")),
        meter)
    );
  }
}

// ---- chat ---------------------------------------------------------------------------

function addMessage(role, text) {
  const empty = $("chat-empty");
  if (empty) empty.remove();
  const body = el("div", { class: "text" }, text);
  const meta = el("div", { class: "meta" });
  const node = el("div", { class: "msg " + role }, el("div", { class: "who" }, role === "user" ? "you" : state.modelId || "assistant"), body, meta);
  $("chat-log").append(node);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return { node, body, meta };
}

function setChatBusy(busy) {
  $("chat-send").disabled = busy;
  $("chat-stop").disabled = !busy;
}

/** Yields the data of each server-sent event of a fetch response. */
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

async function sendChat(text) {
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.node.dataset.state = "streaming";
  const abort = new AbortController();
  state.chatAbort = abort;
  setChatBusy(true);
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let usage = null;
  let answer = "";
  try {
    const body = {
      messages: state.messages,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: Math.max(1, parseInt($("chat-max").value, 10) || 256),
    };
    if (state.modelId) body.model = state.modelId;
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
      body: JSON.stringify(body),
      signal: abort.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) first = performance.now();
        chunks++;
        answer += delta.content;
        reply.body.textContent = answer;
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
    }
    state.messages.push({ role: "assistant", content: answer });
    const tokens = usage ? usage.completion_tokens : chunks;
    const decode = first !== null ? (performance.now() - first) / 1000 : 0;
    reply.meta.textContent =
      tokens + " tokens · " + (decode > 0 && tokens > 1 ? rate((tokens - 1) / decode) + " tok/s · " : "") +
      "first token " + seconds(first !== null ? (first - started) / 1000 : null);
    reply.node.dataset.state = "done";
  } catch (error) {
    // A failed or stopped turn leaves no half answer in the conversation.
    state.messages.pop();
    reply.node.classList.add("error");
    reply.body.textContent = (answer ? answer + "\n\n" : "") + (abort.signal.aborted ? "(stopped)" : "Error: " + error.message);
    reply.node.dataset.state = "failed";
  } finally {
    state.chatAbort = null;
    setChatBusy(false);
  }
}

// ---- wiring -----------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = state.apiKey;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim();
    if (state.apiKey) sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    else sessionStorage.removeItem(KEY_STORAGE);
    schedulePolling();
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || state.chatAbort) return;
    $("chat-input").value = "";
    sendChat(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => state.chatAbort && state.chatAbort.abort());
  $("chat-clear").addEventListener("click", () => {
    if (state.chatAbort) state.chatAbort.abort();
    state.messages = [];
    clear($("chat-log"));
  });
  schedulePolling();
});
