// The web inspector page's script, as a string served from the module: plain
// browser JavaScript, no framework, no build. It puts data into the page only
// as text (textContent, text nodes), never as markup, and talks only to the
// inspector's own API.

/** The page's script (an ES module). */
export const PAGE_SCRIPT = String.raw`"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  query: "",
  tab: "threads",
  thread: null,
  source: null,
  pageSize: 100,
  busy: false,
};

/** An element with properties and children; strings become text nodes, never markup. */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "title") node.title = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

async function api(path, options) {
  const init = Object.assign({ headers: { accept: "application/json" } }, options || {});
  const response = await fetch(path, init);
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON
  }
  if (!response.ok) {
    const error = new Error((body && body.error) || response.status + " " + response.statusText);
    error.status = response.status;
    if (response.status === 401) {
      banner("Not authorized: open the URL the inspector printed at start (it carries the token).");
    }
    throw error;
  }
  return body;
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { accept: "application/json", "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

function banner(text) {
  const node = $("banner");
  node.textContent = text || "";
  node.hidden = !text;
}

const count = (n) => n.toLocaleString("en-US");

function span(ms) {
  ms = Math.max(0, ms);
  if (ms < 1000) return Math.round(ms) + " ms";
  const units = [[86400000, "d"], [3600000, "h"], [60000, "min"], [1000, "s"]];
  const i = units.findIndex(([size]) => ms >= size);
  const [size, unit] = units[i];
  const whole = Math.floor(ms / size);
  const next = units[i + 1];
  if (!next) return whole + " " + unit;
  const rest = Math.floor((ms - whole * size) / next[0]);
  return whole + " " + unit + (rest ? " " + rest + " " + next[1] : "");
}

function ago(iso) {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? iso : span(Date.now() - t) + " ago";
}

function expires(at) {
  if (at === null) return "—";
  if (at === 0) return "never";
  return "in " + span(at - Date.now());
}

function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleTimeString("en-GB", { hour12: false }) + "." +
    String(d.getMilliseconds()).padStart(3, "0");
}

function hexDump(hex) {
  const lines = [];
  const size = hex.length / 2;
  for (let offset = 0; offset < size; offset += 16) {
    const bytes = [];
    let ascii = "";
    for (let i = offset; i < Math.min(offset + 16, size); i++) {
      const pair = hex.slice(2 * i, 2 * i + 2);
      bytes.push(pair);
      const code = parseInt(pair, 16);
      ascii += code >= 32 && code < 127 ? String.fromCharCode(code) : ".";
    }
    lines.push(
      offset.toString(16).padStart(8, "0") + "  " + bytes.slice(0, 8).join(" ").padEnd(23) +
        "  " + bytes.slice(8).join(" ").padEnd(23) + "  |" + ascii + "|",
    );
  }
  return lines.join("\n") || "(empty)";
}

const enc = encodeURIComponent;

// ---- the header ----

async function loadInfo() {
  const info = await api("api/info");
  state.info = info;
  $("version").textContent = "v" + info.version;
  $("store").textContent = info.store;
  $("prefix").textContent = info.prefix === null ? "(not known)" : JSON.stringify(info.prefix);
  $("stat-threads").textContent = count(info.threads);
  $("stat-slots").textContent = count(info.slots);
  $("stat-registry").textContent = count(info.registryEntries);
  $("stat-ttl").textContent = info.readerTtlMs === 0 ? "none" : span(info.readerTtlMs);
  $("mode").textContent = info.allowWrite ? "writable" : "read-only";
  $("mode").className = "badge" + (info.allowWrite ? " writable" : "");
  $("clear").hidden = !info.allowWrite;
  $("expires-head").title = info.expiryKnown
    ? "When the thread expires, as the store tells"
    : "Not known: this store does not tell (a memory backend, or a backend given to the inspector)";
}

// ---- the lists ----

async function loadThreads() {
  const data = await api("api/threads?limit=500&q=" + enc(state.query));
  const rows = data.threads.map((t) => {
    const row = el(
      "tr",
      { onclick: () => openThread(t.threadId) },
      el("td", { class: "num", text: count(t.slots) }),
      el("td", { class: "id", text: t.threadId }),
      el("td", { class: "id", text: t.chain === null ? "—" : t.chain }),
      el("td", {
        class: "when",
        text: t.lastWrite === null ? "—" : ago(t.lastWrite),
        title: t.lastWrite === null
          ? "Not known: the last slot is not a ContextBuffer message"
          : t.lastWrite + " (the last slot's timestamp)",
      }),
      el("td", {
        class: "when",
        text: expires(t.expiresAt),
        title: t.expiresAt ? new Date(t.expiresAt).toISOString() : "",
      }),
    );
    row.dataset.thread = t.threadId;
    if (state.thread && state.thread.id === t.threadId) row.classList.add("picked");
    return row;
  });
  $("threads").tBodies[0].replaceChildren(...rows);
  let note = data.matched === data.total
    ? count(data.total) + " threads"
    : count(data.matched) + " of " + count(data.total) + " threads match";
  if (data.threads.length < data.matched) note += ", the first " + count(data.threads.length) + " shown";
  if (state.info && !state.info.expiryKnown) note += ". Expiry is not known for this store.";
  $("threads-note").textContent = note;
}

async function loadRegistry() {
  const pairs = await api("api/registry");
  const needle = state.query.toLowerCase();
  const root = { children: new Map(), uuid: null };
  let shown = 0;
  for (const { uuid, chain } of pairs) {
    if (needle && !chain.toLowerCase().includes(needle) && !uuid.toLowerCase().includes(needle)) continue;
    shown++;
    let node = root;
    for (const part of chain.split(".")) {
      let next = node.children.get(part);
      if (!next) node.children.set(part, next = { children: new Map(), uuid: null });
      node = next;
    }
    node.uuid = uuid;
  }
  $("registry").replaceChildren(...tree(root));
  $("registry-note").textContent = shown === pairs.length
    ? count(pairs.length) + " chains"
    : count(shown) + " of " + count(pairs.length) + " chains match";
}

function tree(node) {
  return [...node.children].map(([name, child]) => {
    const line = [el("span", { class: "segment", text: name })];
    if (child.uuid !== null) {
      line.push(el("button", {
        class: "uuid",
        text: child.uuid,
        title: "Open the thread of this uuid",
        onclick: (event) => {
          event.preventDefault();
          openThread(child.uuid);
        },
      }));
    }
    if (child.children.size === 0) return el("li", null, ...line);
    return el("li", null, el("details", { open: "" }, el("summary", null, ...line), el("ul", null, ...tree(child))));
  });
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    await loadInfo();
    await (state.tab === "threads" ? loadThreads() : loadRegistry());
  } catch (error) {
    if (error.status !== 401) banner("Cannot reach the inspector: " + error.message);
    return;
  } finally {
    state.busy = false;
  }
  if ($("banner").textContent.startsWith("Cannot reach")) banner("");
}

function showTab(tab) {
  state.tab = tab;
  $("tab-threads").setAttribute("aria-selected", String(tab === "threads"));
  $("tab-registry").setAttribute("aria-selected", String(tab === "registry"));
  $("threads-pane").hidden = tab !== "threads";
  $("registry-pane").hidden = tab !== "registry";
  refresh();
}

// ---- one thread ----

function slotRow(row) {
  const payload = el("td", { class: "payload" });
  if (row.error !== undefined) {
    payload.classList.add("error");
    payload.append("not MessagePack: " + row.error);
  } else {
    const text = el("span", { text: row.payload });
    payload.append(text);
    if (row.cut) {
      payload.append("… ", el("button", {
        class: "link",
        text: "all",
        onclick: async () => {
          const full = await api(slotUrl(row.index));
          text.textContent = full.payload;
          payload.lastChild.remove();
          payload.lastChild.remove();
        },
      }));
    }
    if (row.meta) payload.append(el("span", { class: "meta", text: JSON.stringify(row.meta) }));
  }
  const tr = el(
    "tr",
    null,
    el("td", { class: "num", text: String(row.index) }),
    el("td", { class: "agent", text: row.from === undefined ? "" : row.from, title: row.from || "" }),
    el("td", { class: "agent", text: row.to === undefined ? "" : row.to, title: row.to || "" }),
    el("td", { class: "agent", text: row.type === undefined ? "" : row.type, title: row.type || "" }),
    el("td", { class: "when", text: row.time === undefined ? "" : clock(row.time), title: row.time || "" }),
    payload,
    el("td", { class: "num", text: count(row.size) }),
    el("td", null, el("button", { class: "link hex", text: "hex", title: "Raw bytes", onclick: () => toggleHex(tr, row) })),
  );
  tr.dataset.index = String(row.index);
  return tr;
}

function slotUrl(index) {
  return "api/slot?thread=" + enc(state.thread.id) + "&index=" + index;
}

async function toggleHex(tr, row) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("hex-row")) {
    next.remove();
    return;
  }
  const hex = row.hex !== undefined && row.size * 2 === row.hex.length ? row.hex : (await api(slotUrl(row.index))).hex;
  tr.after(el("tr", { class: "hex-row" }, el("td", { colspan: "8" }, el("pre", { class: "hex", text: hexDump(hex) }))));
}

function setHash(id) {
  const hash = "#thread=" + enc(id);
  if (location.hash !== hash) history.pushState(null, "", hash);
}

async function openThread(id) {
  closeSource();
  banner("");
  state.thread = { id, length: 0, start: 0, shown: 0, follow: true, fresh: 0 };
  setHash(id);
  for (const row of $("threads").tBodies[0].rows) row.classList.toggle("picked", row.dataset.thread === id);
  $("empty").hidden = true;
  $("thread").hidden = false;
  $("thread-id").textContent = id;
  $("thread-chain").textContent = "";
  $("delete-thread").hidden = !(state.info && state.info.allowWrite);
  $("slots").tBodies[0].replaceChildren();
  try {
    await showPage({ tail: state.pageSize });
  } catch (error) {
    banner("Cannot read thread " + JSON.stringify(id) + ": " + error.message);
    return;
  }
  listen(state.thread);
}

async function showPage(range) {
  const t = state.thread;
  const query = "tail" in range ? "&tail=" + range.tail : "&start=" + range.start + "&end=" + (range.start + state.pageSize);
  const page = await api("api/slots?thread=" + enc(t.id) + query);
  if (state.thread !== t) return;
  t.length = Math.max(t.length, page.length);
  t.start = page.start;
  t.shown = page.rows.length;
  t.follow = page.start + page.rows.length >= t.length;
  t.fresh = 0;
  $("thread-chain").textContent = page.chain === null ? "(no chain maps to it)" : "chain " + page.chain;
  $("slots").tBodies[0].replaceChildren(...page.rows.map(slotRow));
  updateRange();
}

function updateRange() {
  const t = state.thread;
  $("range").textContent = t.length === 0
    ? "no slots yet"
    : t.shown === 0
    ? "none of " + count(t.length)
    : "#" + t.start + "–#" + (t.start + t.shown - 1) + " of " + count(t.length) + " slots";
  $("first").disabled = t.start === 0;
  $("prev").disabled = t.start === 0;
  $("next").disabled = t.start + t.shown >= t.length;
  $("last").disabled = t.follow;
  $("new-slots").textContent = !t.follow && t.fresh > 0 ? count(t.fresh) + " new since this page opened" : "";
}

function listen(t) {
  const source = new EventSource("api/events?thread=" + enc(t.id) + "&from=" + t.length);
  state.source = source;
  const live = $("live");
  source.addEventListener("open", () => {
    live.textContent = "live";
    live.className = "badge live";
  });
  source.addEventListener("slots", (event) => onSlots(t, JSON.parse(event.data)));
  source.addEventListener("gone", () => {
    closeSource();
    live.textContent = "ended";
    live.className = "badge off";
    banner("Thread " + JSON.stringify(t.id) + " was deleted or has expired.");
  });
  source.addEventListener("failed", (event) => {
    closeSource();
    live.textContent = "stopped";
    live.className = "badge off";
    banner("Live updates stopped: " + JSON.parse(event.data).error);
  });
  source.addEventListener("error", () => {
    if (state.source !== source) return;
    live.textContent = source.readyState === EventSource.CLOSED ? "offline" : "reconnecting…";
    live.className = "badge off";
  });
}

function closeSource() {
  if (state.source) state.source.close();
  state.source = null;
  $("live").textContent = "";
}

function onSlots(t, rows) {
  if (state.thread !== t) return;
  const end = rows[rows.length - 1].index + 1;
  const added = Math.max(0, end - t.length);
  t.length = Math.max(t.length, end);
  if (!t.follow) {
    t.fresh += added;
    updateRange();
    return;
  }
  const body = $("slots").tBodies[0];
  for (const row of rows) {
    if (row.index < t.start + t.shown) continue;
    const tr = slotRow(row);
    tr.classList.add("fresh");
    body.append(tr);
    t.shown++;
  }
  while (t.shown > state.pageSize) {
    const first = body.firstElementChild;
    const hex = first.nextElementSibling;
    first.remove();
    if (hex && hex.classList.contains("hex-row")) hex.remove();
    t.start++;
    t.shown--;
  }
  updateRange();
  const view = $("view");
  if (view.scrollHeight - view.scrollTop - view.clientHeight < 120) view.scrollTop = view.scrollHeight;
}

// ---- writes (--allow-write) ----

async function deleteThread() {
  const t = state.thread;
  if (!t) return;
  if (!confirm("Delete thread " + JSON.stringify(t.id) + " and its " + count(t.length) + " slots? This cannot be undone.")) return;
  try {
    const result = await post("api/delete-thread", { threadId: t.id });
    banner("Deleted thread " + JSON.stringify(t.id) + " (" + count(result.slots) + " slots).");
  } catch (error) {
    banner("Not deleted: " + error.message);
  }
  refresh();
}

async function clearPrefix() {
  const info = state.info;
  if (!confirm("Delete every thread and registry entry under prefix " + JSON.stringify(info.prefix) + " of " + info.store + "? This cannot be undone.")) return;
  try {
    const result = await post("api/clear", { confirm: "clear" });
    banner("Cleared " + count(result.threads) + " threads and " + count(result.registryEntries) + " registry entries.");
  } catch (error) {
    banner("Not cleared: " + error.message);
  }
  refresh();
}

// ---- wiring ----

function fromHash() {
  const match = /^#thread=(.*)$/.exec(location.hash);
  if (!match) return;
  const id = decodeURIComponent(match[1]);
  if (!state.thread || state.thread.id !== id) openThread(id);
}

$("tab-threads").onclick = () => showTab("threads");
$("tab-registry").onclick = () => showTab("registry");
$("refresh").onclick = () => refresh();
let searchTimer;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.query = $("search").value.trim();
    refresh();
  }, 200);
});
$("first").onclick = () => showPage({ start: 0 });
$("prev").onclick = () => showPage({ start: Math.max(0, state.thread.start - state.pageSize) });
$("next").onclick = () => showPage({ start: state.thread.start + state.pageSize });
$("last").onclick = () => showPage({ tail: state.pageSize });
$("page-size").onchange = () => {
  state.pageSize = Number($("page-size").value);
  if (state.thread) showPage(state.thread.follow ? { tail: state.pageSize } : { start: state.thread.start });
};
$("goto").onchange = () => {
  const n = Number($("goto").value);
  if (state.thread && Number.isInteger(n) && n >= 0) showPage({ start: n });
};
$("delete-thread").onclick = deleteThread;
$("clear").onclick = clearPrefix;
addEventListener("popstate", fromHash);
addEventListener("hashchange", fromHash);

await refresh();
fromHash();
setInterval(() => {
  if (!document.hidden) refresh();
}, 5000);
`;
