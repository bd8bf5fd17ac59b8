// The status page: held statuses updated from the live events (/ui/events) themselves, in place;
// the rest (totals, counters, link, webhook backlogs) from /ui/status.json, read again at most once
// per 5 s: a little after events (so a burst costs one read), and every 15 s for what has no event.
// Every text from the server goes into the page as text (textContent), never as HTML.
"use strict";

// Reads of status.json are at least this far apart (a search typed in is read at once).
const MIN_REFRESH_MS = 5000;
// After an event, wait this long for more before reading status.json.
const SETTLE_MS = 2000;
// Read status.json this often when nothing happens (the link, webhook backlogs have no event).
const PERIOD_MS = 15000;
// status.json lists this many held statuses at most.
const MAX_LISTED = 100;

function text(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value === undefined || value === null ? "" : String(value);
  return el;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c === undefined || c === null ? "" : String(c);
    if (typeof c === "string" && c.length > 24) td.className = "text";
    tr.appendChild(td);
  }
  return tr;
}

// One held status as a table row; data-user and data-resource find it again for events.
function heldRow(user, resource, presence, status, source, until) {
  const tr = row([user, resource, presence, status, source, until]);
  tr.dataset.user = user;
  tr.dataset.resource = resource;
  tr.dataset.source = source;
  return tr;
}

let search = "";
let lastRead = 0;      // when status.json was last asked for (ms)
let reading = false;   // a read is under way
let again = null;      // another read is wanted when it ends: "soon" (after events), "now" (search)
let timer = null;      // the scheduled read

// Ask for a read of status.json no sooner than `delay` ms from now, and at least MIN_REFRESH_MS
// after the previous one; many asks while one is scheduled make one read.
function refreshSoon(delay) {
  if (reading) { again = again || "soon"; return; }
  if (timer !== null) return;
  const wait = Math.max(delay, lastRead + MIN_REFRESH_MS - Date.now(), 0);
  timer = setTimeout(() => { timer = null; refresh(); }, wait);
}

async function refresh() {
  if (reading) { again = "now"; return; }
  if (timer !== null) { clearTimeout(timer); timer = null; }
  reading = true;
  lastRead = Date.now();
  try {
    await read();
  } finally {
    reading = false;
    const next = again;
    again = null;
    if (next === "now") refresh();
    else if (next === "soon") refreshSoon(0);
  }
}

async function read() {
  const q = search ? "?user=" + encodeURIComponent(search) : "";
  let s;
  try {
    const r = await fetch("/ui/status.json" + q, { credentials: "same-origin" });
    if (r.status === 401) { location.reload(); return; }
    s = await r.json();
  } catch (e) {
    text("link-state", "extpresence cannot be reached").className = "down";
    return;
  }
  text("link-state", s.link.state).className = s.link.state === "up" ? "up" : "down";
  text("link-since", s.link.since);
  text("server", s.server);
  text("component", s.component);
  text("observed", s.observed_sessions + (s.complete ? "" : " (the server may not have told every session)"));
  text("held-total", "(" + s.held_total + ")");
  const held = document.getElementById("held");
  held.replaceChildren(...s.held.map(h => heldRow(h.user, h.resource, h.presence, h.status, h.source, h.expires_at)));
  const hooks = document.getElementById("webhooks");
  if (s.webhooks.length === 0) {
    const r = row([s.admin ? "none configured ([[webhooks]] in the configuration)" : "none within this key's domains"]);
    r.firstChild.colSpan = 6;
    r.firstChild.className = "empty";
    hooks.replaceChildren(r);
  } else {
    hooks.replaceChildren(...s.webhooks.map(w => row([w.name, w.pending, w.ok, w.retry, w.dropped, w.disabled ? "disabled (410)" : "active"])));
  }
  const counters = document.getElementById("counter-list");
  const items = [];
  for (const [k, v] of Object.entries(s.counters)) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    items.push(dt, dd);
  }
  if (items.length === 0) {
    const dd = document.createElement("dd");
    dd.className = "empty";
    dd.textContent = "The counters over every domain are shown to admin keys.";
    items.push(dd);
  }
  counters.replaceChildren(...items);
}

// An event carries the user's presence after the change, with every resource: put its held
// (extpresence) resources in place of the user's rows. A row's "until" is not in the event: it is
// kept when the same source still holds the resource, and read with the next status.json.
function applyEvent(e) {
  if (typeof e.user !== "string" || !Array.isArray(e.resources)) return;
  if (search && !e.user.includes(search.toLowerCase())) return;
  const held = document.getElementById("held");
  const old = Array.from(held.children).filter(tr => tr.dataset.user === e.user);
  const rows = e.resources
    .filter(r => r.origin === "extpresence")
    .map(r => {
      const source = Array.isArray(r.sources) && r.sources.length ? r.sources[r.sources.length - 1] : "";
      const before = old.find(tr => tr.dataset.resource === r.resource && tr.dataset.source === source);
      const until = before ? before.lastChild.textContent : "";
      return heldRow(e.user, r.resource, r.presence, r.status, source, until);
    });
  if (old.length > 0) {
    old[0].before(...rows);
    for (const tr of old) tr.remove();
  } else if (rows.length > 0) {
    // In user order, as status.json lists them (it lists at most 100 rows: past the last of a
    // full list, the row is not shown, as status.json would not show it).
    const next = Array.from(held.children).find(tr => tr.dataset.user > e.user);
    if (next) next.before(...rows);
    else if (held.children.length < MAX_LISTED) held.append(...rows);
  }
}

function listen() {
  const list = document.getElementById("events");
  const es = new EventSource("/ui/events");
  es.addEventListener("open", () => text("events-state", "(live)"));
  es.addEventListener("error", () => text("events-state", "(reconnecting)"));
  es.addEventListener("presence", (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    const li = document.createElement("li");
    li.className = "event";
    li.textContent = [e.at, e.user, e.presence, e.status === null || e.status === undefined ? "" : JSON.stringify(e.status), "(" + e.cause + ")"].join(" ");
    list.prepend(li);
    while (list.children.length > 50) list.lastChild.remove();
    applyEvent(e);
    refreshSoon(SETTLE_MS);
  });
  es.addEventListener("reset", () => refreshSoon(0));
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("search");
  let typing = null;
  input.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { search = input.value.trim(); refresh(); }, 300);
  });
  refresh();
  setInterval(() => refreshSoon(0), PERIOD_MS);
  listen();
});
