// crossrec explorer: builds a history, asks the server's own Predict API (as any client does) and
// shows the served list beside the two-tower order, or one feed across domains. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const titles = new Map(); // "domain:item_id" -> title
const added = new Map(); // "domain:item_id" -> version it was added after (crossrec catalogue add)

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function parseHistory() {
  const items = [];
  $("history").value.split("\n").map((l) => l.trim()).filter(Boolean).forEach((line, n) => {
    const at = line.indexOf(":");
    if (at < 1 || at === line.length - 1) throw new Error(`history line ${n + 1}: expected domain:item_id, got "${line}"`);
    items.push({ domain: line.slice(0, at), item_id: line.slice(at + 1) });
  });
  return items;
}

async function learnTitles(keys) {
  const missing = [...new Set(keys)].filter((k) => !titles.has(k));
  for (let i = 0; i < missing.length; i += 200) {
    const part = missing.slice(i, i + 200);
    const keys = encodeURIComponent(part.join(","));
    const [found, fresh] = await Promise.all([getJSON(`/ui/api/titles?keys=${keys}`),
                                              getJSON(`/ui/api/added?keys=${keys}`).catch(() => ({ items: {} }))]);
    for (const key of part) {
      const item = fresh.items[key];
      if (item) added.set(key, item.after_version);
      titles.set(key, found[key] || (item && item.title) || null);
    }
  }
}

function addedBadge(domain, itemId) {
  // items `crossrec catalogue add` placed from their text since the towers were trained
  const after = added.get(`${domain}:${itemId}`);
  if (after === undefined) return "";
  const span = document.createElement("span");
  span.className = "added";
  span.textContent = "new";
  span.title = `added by crossrec catalogue add after version ${after}: placed from its text, not trained on clicks yet`;
  return span;
}

function label(domain, itemId) {
  const title = titles.get(`${domain}:${itemId}`);
  return title ? `${title} (${itemId})` : itemId;
}

function chip(domain) {
  const span = document.createElement("span");
  span.className = "domain";
  span.textContent = domain;
  return span;
}

async function showHistory() {
  const view = $("history-view");
  view.replaceChildren();
  let items;
  try { items = parseHistory(); } catch (e) { return; }
  await learnTitles(items.map((h) => `${h.domain}:${h.item_id}`)).catch(() => {});
  for (const h of items) {
    const li = document.createElement("li");
    li.append(chip(h.domain), " ", label(h.domain, h.item_id));
    view.append(li);
  }
}

async function servedVersions(model) {
  try {
    const status = await getJSON(`/v1/models/${model}`);
    return status.model_version_status.filter((s) => s.state === "AVAILABLE").map((s) => s.version);
  } catch (e) {
    return [];
  }
}

let servedModel = "recommender";

async function refreshVersions() {
  let versions = await servedVersions("recommender");
  servedModel = "recommender";
  if (!versions.length) { versions = await servedVersions("retrieval"); servedModel = "retrieval"; }
  const select = $("version");
  const chosen = select.value;
  select.replaceChildren(...versions.sort((a, b) => b - a).map((v) => new Option(`${servedModel} v${v}`, v)));
  if (versions.includes(chosen)) select.value = chosen;
  $("served-model").textContent = versions.length ? `(${servedModel})` : "(no model served)";
  return versions;
}

async function predict(model, version, history, domain, k) {
  const ids = history.length ? history.map((h) => h.item_id) : [""];
  const domains = history.length ? history.map((h) => h.domain) : [""];
  const path = version ? `/v1/models/${model}/versions/${version}:predict` : `/v1/models/${model}:predict`;
  const body = { inputs: { history_item_ids: [ids], history_domains: [domains], target_domain: [domain],
                           k: [k], exclude_history: [true] } };
  const answer = await getJSON(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body) });
  return answer.outputs;
}

function because(outputs, i) {
  const div = document.createElement("div");
  div.className = "because";
  if (!outputs.because_item_ids) {
    div.textContent = "explanation absent (this export predates it)";
    return div;
  }
  const by = outputs.because_item_ids[0][i];
  if (by) {
    const from = outputs.because_domains[0][i];
    const share = Math.round(100 * outputs.because_weights[0][i]);
    div.append("because you liked ", chip(from), ` ${label(from, by)} (${share}%)`);
  } else {
    div.textContent = "no known history item to explain it";
  }
  return div;
}

function answerItem(domain, itemId, outputs, i, withChip = false) {
  const li = document.createElement("li");
  li.dataset.itemId = itemId;
  li.dataset.domain = domain;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = ` score ${Number(outputs.scores[0][i]).toFixed(4)}`;
  if (withChip) li.append(chip(domain), " ");
  li.append(label(domain, itemId), " ", addedBadge(domain, itemId), score, because(outputs, i));
  return li;
}

function render(list, outputs, domain, other) {
  list.replaceChildren();
  const elsewhere = new Set(other.item_ids[0].filter(Boolean));
  outputs.item_ids[0].forEach((itemId, i) => {
    if (!itemId) return;
    const li = answerItem(domain, itemId, outputs, i);
    if (!elsewhere.has(itemId)) {  // in this list only: what the other order does not show
      li.classList.add("only-here");
      li.title = "not in the other list";
    }
    list.append(li);
  });
}

function shares(domains) {
  const counts = new Map();
  domains.forEach((d) => counts.set(d, (counts.get(d) || 0) + 1));
  return [...counts].sort().map(([d, c]) => `${d} ${Math.round(100 * c / domains.length)}%`).join(" · ");
}

function historyNote(history, outputs) {
  // how much of the history the model knows: unknown ids are served like a brand-new user
  const note = $("history-note");
  const known = outputs.history_known ? Number(outputs.history_known[0]) : history.length;
  if (history.length && known === 0) {
    note.textContent = `None of the ${history.length} history items is known to the model (unknown ids or ` +
      "domains): this is the list a brand-new user gets.";
  } else {
    note.textContent = "";
  }
  note.hidden = !note.textContent;
}

async function recommend() {
  try {
    const history = parseHistory();
    const domain = $("target-domain").value;
    const k = Math.max(1, Math.min(50, parseInt($("k").value, 10) || 10));
    if (!domain) throw new Error("choose a target domain");
    setStatus("asking the server…");
    const version = $("version").value;
    const [served, twoTower] = await Promise.all([
      predict(servedModel, version, history, domain, k),
      predict("retrieval", servedModel === "retrieval" ? version : "", history, domain, k),
    ]);
    const keys = [...served.item_ids[0], ...twoTower.item_ids[0]].filter(Boolean).map((i) => `${domain}:${i}`);
    for (const out of [served, twoTower]) {
      if (out.because_item_ids) out.because_item_ids[0].forEach((b, i) => b && keys.push(`${out.because_domains[0][i]}:${b}`));
    }
    await learnTitles(keys).catch(() => {});
    render($("served-list"), served, domain, twoTower);
    render($("retrieval-list"), twoTower, domain, served);
    $("retrieval-model").textContent = "(retrieval, latest)";
    historyNote(history, served);
    const got = served.item_ids[0].filter(Boolean).length;
    const asked = Number($("k").value) > k ? ` (k is at most ${k} here)` : "";
    setStatus(`${servedModel} v${version || "latest"}: ${got} items for ${domain}${asked}`);
    $("answers").scrollIntoView({ behavior: "instant", block: "start" });
    document.body.dataset.answered = String(Date.now());
  } catch (e) {
    setStatus(e.message, true);
  }
}

function debounce(fn, ms = 200) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

async function feed() {
  // one list across every domain: the recommender's `feed` signature, with the sliders' weights
  try {
    const history = parseHistory();
    if (servedModel !== "recommender") throw new Error("the feed is a signature of the recommender model; none is served");
    const n = Math.max(1, Math.min(50, parseInt($("feed-n").value, 10) || 10));
    const version = $("version").value;
    const path = version ? `/v1/models/recommender/versions/${version}:predict` : "/v1/models/recommender:predict";
    const body = { signature_name: "feed", inputs: {
      history_item_ids: [history.length ? history.map((h) => h.item_id) : [""]],
      history_domains: [history.length ? history.map((h) => h.domain) : [""]],
      n: [n], diversity: [Number($("diversity").value)], calibration: [Number($("calibration").value)],
      target_shares: [[]], exclude_history: [true] } };  // no target shares: the history's
    showWeights();  // the labels say what is asked, however the sliders were moved
    setStatus("asking the server for a feed…");
    const out = (await getJSON(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body) })).outputs;
    const picked = out.item_ids[0].map((id, i) => [id, out.domains[0][i], i]).filter(([id]) => id);
    const keys = picked.map(([id, d]) => `${d}:${id}`);
    out.because_item_ids[0].forEach((b, i) => b && keys.push(`${out.because_domains[0][i]}:${b}`));
    await learnTitles(keys).catch(() => {});
    const list = $("feed-list");
    list.replaceChildren(...picked.map(([id, d, i]) => answerItem(d, id, out, i, true)));
    $("feed-shares").textContent = `domains in the feed: ${shares(picked.map(([, d]) => d)) || "none"}` +
      (history.length ? ` · in the history: ${shares(history.map((h) => h.domain))}` : "");
    $("feed-model").textContent = `(recommender v${version || "latest"}, diversity ${$("diversity").value}, ` +
      `calibration ${$("calibration").value})`;
    $("feed-answer").hidden = false;
    $("feed-answer").scrollIntoView({ behavior: "instant", block: "start" });
    setStatus(`recommender v${version || "latest"}: a feed of ${picked.length} items`);
    document.body.dataset.fed = String(Date.now());
  } catch (e) {
    setStatus(e.message, true);
  }
}

function showWeights() {
  $("diversity-value").textContent = Number($("diversity").value).toFixed(2);
  $("calibration-value").textContent = Number($("calibration").value).toFixed(1);
}

async function searchItems() {
  const list = $("item-results");
  const q = $("item-search").value.trim();
  list.replaceChildren();
  if (!q) return;
  try {
    const found = await getJSON(`/ui/api/items?q=${encodeURIComponent(q)}&domain=${encodeURIComponent($("item-domain").value)}`);
    if (!found.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = q ? `no item matches "${q}"` : "no items";
      list.append(li);
    }
    for (const item of found) {
      titles.set(`${item.domain}:${item.item_id}`, item.title);
      const li = document.createElement("li");
      li.append(chip(item.domain), ` ${item.title} (${item.item_id})${item.added ? " · added since training" : ""}`);
      li.addEventListener("click", () => {
        $("history").value = `${$("history").value.trim()}\n${item.domain}:${item.item_id}`.trim();
        showHistory();
      });
      list.append(li);
    }
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function searchUsers() {
  const list = $("user-results");
  list.replaceChildren();
  try {
    const found = await getJSON(`/ui/api/users?q=${encodeURIComponent($("user-search").value.trim())}`);
    for (const user of found) {
      const li = document.createElement("li");
      li.textContent = user;
      li.addEventListener("click", async () => {
        const answer = await getJSON(`/ui/api/users/${encodeURIComponent(user)}`);
        answer.history.forEach((h) => titles.set(`${h.domain}:${h.item_id}`, h.title));
        $("history").value = answer.history.map((h) => `${h.domain}:${h.item_id}`).join("\n");
        showHistory();
      });
      list.append(li);
    }
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function start() {
  const info = await getJSON("/ui/api/info");
  $("data-source").textContent = info.data ? `data: ${info.data} (${info.users} users, ${info.items} items)`
                                           : "no data folder (--ui_data): type histories as domain:item_id";
  if (info.added) $("data-source").textContent += ` · ${info.added} items added since training (marked new)`;
  for (const d of info.domains) {
    $("target-domain").append(new Option(d, d));
    $("item-domain").append(new Option(d, d));
  }
  $("diversity").value = info.feed_defaults.diversity;
  $("calibration").value = info.feed_defaults.calibration;
  showWeights();
  await refreshVersions();
  $("recommend").addEventListener("click", recommend);
  $("feed").addEventListener("click", feed);
  for (const slider of ["diversity", "calibration"]) {
    $(slider).addEventListener("input", showWeights);
    $(slider).addEventListener("change", () => { if (!$("feed-answer").hidden) feed(); });  // a feed on show follows the slider
  }
  $("refresh-versions").addEventListener("click", refreshVersions);
  $("history").addEventListener("input", debounce(showHistory, 300));
  $("item-search").addEventListener("input", debounce(searchItems));
  $("item-domain").addEventListener("change", searchItems);
  $("user-search").addEventListener("input", debounce(searchUsers));
  document.body.dataset.ready = "true";
}

start().catch((e) => setStatus(e.message, true));
