// The chat page: it calls this server's OpenAI-compatible API exactly as any other client does
// (GET /v1/models, POST /v1/chat/completions with stream: true), with the key its user typed.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    model: $("model"), modelName: $("model-name"), apiKey: $("api-key"), rememberKey: $("remember-key"),
    systemPrompt: $("system-prompt"), temperature: $("temperature"), topP: $("top-p"),
    maxTokens: $("max-tokens"), messages: $("messages"), composer: $("composer"), prompt: $("prompt"),
    send: $("send"), stop: $("stop"), banner: $("banner"), settings: $("settings"),
    toggleSettings: $("toggle-settings"), newChat: $("new-chat"),
  };
  // Settings are kept in localStorage; the API key only when the user asks for it.
  const SETTINGS_KEY = "playground.settings";
  const API_KEY_KEY = "playground.apiKey";
  const SAVED_FIELDS = ["systemPrompt", "temperature", "topP", "maxTokens"];

  // The conversation as sent to the API (the system prompt is added at send time).
  let history = [];
  // The AbortController of the reply being streamed, if any.
  let controller = null;

  function storage() {
    try { return window.localStorage; } catch { return null; }  // disabled storage: memory only
  }

  function restoreSettings() {
    const store = storage();
    if (!store) return {};
    let saved = {};
    try { saved = JSON.parse(store.getItem(SETTINGS_KEY) || "{}"); } catch { saved = {}; }
    for (const name of SAVED_FIELDS) {
      if (typeof saved[name] === "string") els[name].value = saved[name];
    }
    const key = store.getItem(API_KEY_KEY);
    if (key) {
      els.apiKey.value = key;
      els.rememberKey.checked = true;
    }
    return saved;
  }

  function saveSettings() {
    const store = storage();
    if (!store) return;
    const saved = { model: els.model.value };
    for (const name of SAVED_FIELDS) saved[name] = els[name].value;
    store.setItem(SETTINGS_KEY, JSON.stringify(saved));
    if (els.rememberKey.checked && els.apiKey.value.trim()) store.setItem(API_KEY_KEY, els.apiKey.value.trim());
    else store.removeItem(API_KEY_KEY);
  }

  function requestHeaders() {
    const headers = { "Content-Type": "application/json" };
    const key = els.apiKey.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  // "message (401, invalid_api_key, param: x, retry after 1 s)" from the server's error envelope.
  function describeError(status, error, retryAfter) {
    const details = [];
    if (status) details.push(String(status));
    if (error && error.code) details.push(error.code);
    if (error && error.param) details.push(`param: ${error.param}`);
    if (retryAfter) details.push(`retry after ${retryAfter} s`);
    const message = (error && error.message) || `The server answered ${status || "with an error"}.`;
    return details.length ? `${message} (${details.join(", ")})` : message;
  }

  async function errorFromResponse(response) {
    let error = null;
    try { error = (await response.json()).error; } catch { error = null; }
    return describeError(response.status, error, response.headers.get("Retry-After"));
  }

  function showBanner(text) {
    els.banner.textContent = text;
    els.banner.hidden = false;
  }

  function hideBanner() {
    els.banner.hidden = true;
    els.banner.textContent = "";
  }

  async function loadModels(preferred) {
    try {
      const response = await fetch("/v1/models", { headers: requestHeaders() });
      if (!response.ok) {
        const text = await errorFromResponse(response);
        if (response.status === 401) {
          showBanner(`${text} Enter the server's API key in Settings.`);
          setSettingsOpen(true);  // folded away on a phone: unfold them where the key goes
        } else {
          showBanner(text);
        }
        return;
      }
      hideBanner();
      const ids = (await response.json()).data.map((model) => model.id);
      const current = els.model.value || preferred;
      els.model.replaceChildren(...ids.map((id) => new Option(id, id)));
      if (current && ids.includes(current)) els.model.value = current;
      els.modelName.textContent = els.model.value;
    } catch (err) {
      showBanner(`Cannot reach the server: ${err.message}`);
    }
  }

  // On narrow screens the settings fold away under a button (a no-op on wide ones, where they show).
  function setSettingsOpen(open) {
    els.settings.classList.toggle("open", open);
    els.toggleSettings.setAttribute("aria-expanded", String(open));
  }

  function appendMessage(role, text) {
    const item = document.createElement("li");
    item.className = `message ${role}`;
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    item.append(content);
    if (role === "assistant") {
      const meta = document.createElement("div");
      meta.className = "meta";
      item.append(meta);
    }
    els.messages.append(item);
    scrollToEnd(true);
    return item;
  }

  function scrollToEnd(force) {
    const box = els.messages;
    const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    if (force || nearEnd) box.scrollTop = box.scrollHeight;
  }

  function setBusy(busy) {
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    els.model.disabled = busy;
  }

  // A number field's value, or undefined when empty (the server's default then applies). Out of
  // range values are sent as typed: the server's 400 names the field.
  function numberField(input) {
    const text = input.value.trim();
    return text === "" ? undefined : Number(text);
  }

  // The `data:` payloads of a Server-Sent Events body, as they arrive.
  async function* serverSentEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let boundary;
        while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, boundary);
          buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
          const data = block.split(/\r?\n/)
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) yield data;  // comments (": keep-alive") carry no data
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  class StreamError extends Error {}

  function formatMeta({ usage, tokens, startedAt, firstTokenAt, endedAt, finishReason, stopped }) {
    const parts = [];
    if (usage) {
      parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    } else if (tokens) {
      parts.push(`${tokens} tokens received`);
    }
    if (firstTokenAt !== null) {
      parts.push(`first token ${Math.round(firstTokenAt - startedAt)} ms`);
      const generated = usage ? usage.completion_tokens : tokens;
      const seconds = (endedAt - firstTokenAt) / 1000;
      if (generated > 1 && seconds > 0) parts.push(`${((generated - 1) / seconds).toFixed(1)} tokens/s`);
    }
    if (stopped) parts.push("stopped");
    else if (finishReason) parts.push(`finish: ${finishReason}`);
    return parts.join(" · ");
  }

  async function send(text) {
    const messages = [];
    const system = els.systemPrompt.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history, { role: "user", content: text });
    const body = {
      model: els.model.value, messages, stream: true, stream_options: { include_usage: true },
      temperature: numberField(els.temperature), top_p: numberField(els.topP),
      max_tokens: numberField(els.maxTokens),
    };

    const question = appendMessage("user", text);
    const reply = appendMessage("assistant", "");
    reply.dataset.state = "waiting";
    const contentBox = reply.querySelector(".content");
    const run = { usage: null, tokens: 0, startedAt: performance.now(), firstTokenAt: null, endedAt: null,
                  finishReason: null, stopped: false };
    let content = "";
    controller = new AbortController();
    setBusy(true);
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: requestHeaders(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) throw new StreamError(await errorFromResponse(response));
      reply.dataset.state = "streaming";
      for await (const data of serverSentEvents(response.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new StreamError(describeError(null, chunk.error));
        if (chunk.usage) run.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          if (run.firstTokenAt === null) run.firstTokenAt = performance.now();
          run.tokens += 1;
          content += choice.delta.content;
          contentBox.textContent = content;
          scrollToEnd(false);
        }
        if (choice.finish_reason) run.finishReason = choice.finish_reason;
      }
      reply.dataset.state = "done";
    } catch (err) {
      if (err.name === "AbortError") {
        run.stopped = true;
        reply.dataset.state = "stopped";
      } else {
        reply.dataset.state = "error";
        const error = document.createElement("div");
        error.className = "error";
        error.textContent = err instanceof StreamError ? err.message : `Request failed: ${err.message}`;
        reply.insertBefore(error, reply.querySelector(".meta"));
      }
    } finally {
      controller = null;
      run.endedAt = performance.now();
      reply.querySelector(".meta").textContent = formatMeta(run);
      setBusy(false);
    }
    if (content) {
      history.push({ role: "user", content: text }, { role: "assistant", content });
    } else {
      // Nothing came back: leave the question out of the conversation; after an error, give it
      // back to edit and resend.
      question.classList.add("unsent");
      if (reply.dataset.state === "error" && !els.prompt.value) els.prompt.value = text;
    }
    els.prompt.focus();
  }

  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.prompt.value.trim();
    if (!text || controller) return;
    if (!els.model.value) {
      showBanner("No model to talk to yet: the model list did not load.");
      return;
    }
    els.prompt.value = "";
    send(text);
  });

  els.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.composer.requestSubmit();
    }
  });

  // Aborting the fetch closes the connection; the server then aborts the generation.
  els.stop.addEventListener("click", () => { if (controller) controller.abort(); });

  els.newChat.addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    els.messages.replaceChildren();
    els.prompt.focus();
  });

  els.toggleSettings.addEventListener("click", () => setSettingsOpen(!els.settings.classList.contains("open")));

  for (const name of SAVED_FIELDS) els[name].addEventListener("change", saveSettings);
  els.model.addEventListener("change", () => { els.modelName.textContent = els.model.value; saveSettings(); });
  els.rememberKey.addEventListener("change", saveSettings);
  els.apiKey.addEventListener("change", () => { saveSettings(); loadModels(); });

  const saved = restoreSettings();
  loadModels(saved.model);
})();
