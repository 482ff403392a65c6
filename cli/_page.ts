// The web inspector's page: its HTML and its style sheet, as strings served
// from the module (no build step, nothing fetched at run time; the script is
// in _page_script.ts). It holds no data: the page fetches it from the API, and
// never puts it into markup.

/** The page. Its script and style sheet are separate files, which the CSP allows alone. */
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shared-backend inspector</title>
<link rel="stylesheet" href="app.css">
<script type="module" src="app.js"></script>
</head>
<body>
<header>
  <div class="title">
    <h1>shared-backend inspector</h1>
    <span id="version" class="muted"></span>
    <span id="mode" class="badge"></span>
    <span id="connection" class="badge"></span>
  </div>
  <dl id="summary">
    <div><dt>store</dt><dd id="store">…</dd></div>
    <div><dt>prefix</dt><dd id="prefix">…</dd></div>
    <div><dt>threads</dt><dd id="stat-threads">…</dd></div>
    <div><dt>slots</dt><dd id="stat-slots">…</dd></div>
    <div><dt>registry entries</dt><dd id="stat-registry">…</dd></div>
    <div><dt title="The TTL this inspector would write with (XP_TTL_MS), not the data's">reader's TTL</dt><dd id="stat-ttl">…</dd></div>
  </dl>
  <button id="clear" class="danger" hidden>Clear prefix…</button>
</header>
<div id="banner" role="alert" hidden></div>
<main>
  <aside>
    <input id="search" type="search" placeholder="Search thread id or chain" autocomplete="off" spellcheck="false">
    <div class="tabs" role="tablist">
      <button id="tab-threads" role="tab" aria-selected="true">Threads</button>
      <button id="tab-registry" role="tab" aria-selected="false">Registry</button>
      <button id="refresh" title="Reload the list (it also reloads every 5 s)">↻</button>
    </div>
    <section id="threads-pane">
      <table id="threads">
        <thead><tr><th class="num">Slots</th><th>Thread</th><th>Chain</th><th>Last write</th><th id="expires-head">Expires</th></tr></thead>
        <tbody></tbody>
      </table>
      <p id="threads-note" class="muted"></p>
    </section>
    <section id="registry-pane" hidden>
      <ul id="registry" class="tree"></ul>
      <p id="registry-note" class="muted"></p>
    </section>
  </aside>
  <section id="view">
    <p id="empty" class="muted">Choose a thread on the left, or a chain in the registry.</p>
    <div id="thread" hidden>
      <div class="thread-head">
        <h2 id="thread-id"></h2>
        <span id="thread-chain" class="muted"></span>
        <span id="live" class="badge"></span>
        <button id="delete-thread" class="danger" hidden>Delete thread…</button>
      </div>
      <div class="pager">
        <button id="first" title="First page">«</button>
        <button id="prev" title="Previous page">‹</button>
        <span id="range"></span>
        <button id="next" title="Next page">›</button>
        <button id="last" title="Last page, following new slots">»</button>
        <label>per page <select id="page-size"><option>50</option><option selected>100</option><option>200</option><option>500</option></select></label>
        <label>go to # <input id="goto" type="number" min="0" step="1"></label>
        <span id="new-slots" class="muted"></span>
      </div>
      <table id="slots">
        <thead><tr><th class="num">#</th><th>From</th><th>To</th><th>Type</th><th>Time</th><th>Payload</th><th class="num">Size</th><th></th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
  </section>
</main>
</body>
</html>
`;

/** The style sheet. */
export const PAGE_CSS = `:root {
  --bg: #fbfbfa; --fg: #1d1f21; --muted: #6b7075; --line: #e2e4e6;
  --accent: #2459a8; --pick: #e8f0fb; --danger: #b3261e; --live: #1e7b34;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg);
}
* { box-sizing: border-box; }
body { margin: 0; height: 100vh; display: flex; flex-direction: column; }
header { padding: 8px 16px; border-bottom: 1px solid var(--line); background: #fff;
  display: flex; flex-wrap: wrap; align-items: center; gap: 4px 24px; }
.title { display: flex; align-items: baseline; gap: 10px; }
h1 { font-size: 16px; margin: 0; }
h2 { font-size: 15px; margin: 0; font-family: var(--mono); word-break: break-all; }
dl { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 0; }
dl div { display: flex; gap: 6px; }
dt { color: var(--muted); }
dd { margin: 0; font-family: var(--mono); }
.muted { color: var(--muted); }
.badge { font-size: 12px; padding: 1px 8px; border-radius: 10px; background: var(--line); }
.badge:empty { display: none; }
.badge.live { background: #dff3e4; color: var(--live); }
.badge.writable { background: #fde7e4; color: var(--danger); }
.badge.off { background: #fde7e4; color: var(--danger); }
#banner { padding: 8px 16px; background: #fff4d6; border-bottom: 1px solid #f0d98a; }
main { flex: 1; display: flex; min-height: 0; }
aside { width: 44%; max-width: 720px; min-width: 320px; border-right: 1px solid var(--line);
  display: flex; flex-direction: column; min-height: 0; }
aside > section { overflow: auto; flex: 1; }
aside p { padding: 0 8px; }
#search { margin: 8px; padding: 6px 8px; border: 1px solid var(--line); border-radius: 4px; font: inherit; }
.tabs { display: flex; gap: 4px; padding: 0 8px; border-bottom: 1px solid var(--line); }
.tabs button { border: 0; background: none; padding: 6px 10px; font: inherit; cursor: pointer;
  border-bottom: 2px solid transparent; }
.tabs button[aria-selected="true"] { border-bottom-color: var(--accent); color: var(--accent); }
#refresh { margin-left: auto; }
#view { flex: 1; overflow: auto; padding: 8px 16px; min-width: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { position: sticky; top: 0; background: var(--bg); font-weight: 600; font-size: 12px; color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id { font-family: var(--mono); font-size: 12px; word-break: break-all; }
#threads tbody tr { cursor: pointer; }
#threads tbody tr:hover { background: #f1f3f5; }
#threads tbody tr.picked { background: var(--pick); }
.thread-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 10px; margin-bottom: 6px; }
.thread-head .danger { margin-left: auto; }
.pager { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; margin: 6px 0; }
.pager input { width: 80px; }
#slots td { font-size: 13px; }
#slots td.payload { font-family: var(--mono); font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; width: 100%; }
td.agent { white-space: nowrap; max-width: 12em; overflow: hidden; text-overflow: ellipsis; font-family: var(--mono); font-size: 12px; }
td.when { white-space: nowrap; }
#slots tr.fresh td { animation: fresh 2s ease-out; }
@keyframes fresh { from { background: #dff3e4; } to { background: transparent; } }
#slots td.error { color: var(--danger); }
pre.hex { margin: 0; font: 12px/1.35 var(--mono); background: #f3f4f6; padding: 6px 8px; overflow: auto; }
.meta { color: var(--muted); display: block; }
button { font: inherit; cursor: pointer; }
button.link { border: 0; background: none; color: var(--accent); padding: 0 2px; }
button.danger { color: var(--danger); border: 1px solid var(--danger); background: #fff; border-radius: 4px; }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding-left: 16px; }
ul.tree { padding: 8px; }
ul.tree li { margin: 2px 0; }
.segment { font-family: var(--mono); }
.uuid { font-family: var(--mono); font-size: 12px; color: var(--accent); background: none; border: 0; padding: 0 4px; }
`;
