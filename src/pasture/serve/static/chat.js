// The chat page: keeps the conversation, streams each reply from /v1/chat/completions
// (server-sent events) and renders it as Markdown while it arrives.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const log = $("log"), input = $("input"), send = $("send"), stop = $("stop");
  const settings = ["system", "temperature", "max-tokens", "api-key"];
  let history = [];
  let model = null;
  let controller = null;

  for (const id of settings) {
    const saved = localStorage.getItem(`pasture-${id}`);
    if (saved !== null) $(id).value = saved;
    $(id).addEventListener("change", () => localStorage.setItem(`pasture-${id}`, $(id).value));
  }

  const headers = () => {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  };

  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = `message ${role}`;
    if (role === "assistant") div.innerHTML = Markdown.render(text); else div.textContent = text;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }

  async function loadModel() {
    try {
      const r = await fetch("/v1/models", { headers: headers() });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
      model = body.data[0].id;
      $("model-name").textContent = model;
    } catch (e) {
      bubble("error", `Could not list models: ${e.message}`);
    }
  }

  async function ask(text) {
    if (!model) await loadModel();
    history.push({ role: "user", content: text });
    bubble("user", text);
    const reply = bubble("assistant", "");
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    controller = new AbortController();
    send.disabled = true; stop.hidden = false;
    let answer = "";
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ model, messages, stream: true,
                               temperature: Number($("temperature").value),
                               max_tokens: Number($("max-tokens").value) }),
      });
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        throw new Error(body.error ? body.error.message : `HTTP ${r.status}`);
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message);
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (delta && delta.content) {
              answer += delta.content;
              reply.innerHTML = Markdown.render(answer);
              log.scrollTop = log.scrollHeight;
            }
          }
        }
      }
      history.push({ role: "assistant", content: answer });
    } catch (e) {
      if (e.name !== "AbortError") { reply.classList.add("error"); reply.textContent = e.message; history.pop(); }
      else if (answer) history.push({ role: "assistant", content: answer });
    } finally {
      controller = null; send.disabled = false; stop.hidden = true;
    }
  }

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    ask(text);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  $("reset").addEventListener("click", () => { history = []; log.innerHTML = ""; });
  loadModel();
})();
