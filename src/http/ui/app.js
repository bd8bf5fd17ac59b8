// The status page: held statuses updated from the live events (/ui/events) themselves, in place;
// the rest (health, totals and rates, observed sessions, webhook backlogs) from /ui/status.json,
// read again at most once per 5 s: a little after events (so a burst costs one read), and every
// 15 s for what has no event. The first read also gives the last events of the resume buffer, and
// the live stream resumes after the last of them (?after=), so nothing falls between the two.
// One user opens with #user=<jid> (/ui/user.json). Times show in the browser's local time, with
// the UTC time on hover. Every text from the server goes into the page as text (textContent),
// never as HTML.
"use strict";

// Reads of status.json are at least this far apart (a search typed in is read at once).
const MIN_REFRESH_MS = 5000;
// After an event, wait this long for more before reading status.json.
const SETTLE_MS = 2000;
// Read status.json this often when nothing happens (the link, webhook backlogs have no event).
const PERIOD_MS = 15000;
// status.json lists this many rows at most.
const MAX_LISTED = 100;
// Events kept in the list.
const MAX_EVENTS = 50;

// A <time> in local time, its UTC time on hover; empty for no time.
function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d.getTime())) return iso;
  const t = document.createElement("time");
  t.dateTime = iso;
  t.title = d.toISOString().replace(".000Z", "Z") + " (UTC)";
  t.textContent = d.toLocaleString();
  return t;
}

// Put `value` (text, or a DOM node) into `el`.
function put(el, value) {
  if (value instanceof Node) el.replaceChildren(value);
  else el.textContent = value === undefined || value === null ? "" : String(value);
  return el;
}

function text(id, value) {
  const el = document.getElementById(id);
  if (el) put(el, value);
  return el;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    put(td, c);
    if (typeof c === "string" && c.length > 24) td.className = "text";
    tr.appendChild(td);
  }
  return tr;
}

function emptyRow(columns, message) {
  const r = row([message]);
  r.firstChild.colSpan = columns;
  r.firstChild.className = "empty";
  return r;
}

// A link that opens the user's view.
function userLink(user) {
  const a = document.createElement("a");
  a.href = "#user=" + encodeURIComponent(user);
  a.textContent = user;
  return a;
}

// The source cell: the source, marked when it wins.
function sourceCell(source, winning) {
  const span = document.createElement("span");
  span.textContent = source;
  if (winning) {
    const mark = document.createElement("span");
    mark.className = "winner";
    mark.textContent = "✓ wins";
    mark.title = "the source contacts see (the most restrictive, then the most recent)";
    const wrap = document.createElement("span");
    wrap.append(span, mark);
    return wrap;
  }
  return span;
}

// One source of a held resource as a table row; data-* find it again for events.
function heldRow(h) {
  const tr = row([userLink(h.user), h.resource, h.presence, h.status, sourceCell(h.source, h.winning), when(h.expires_at), when(h.set_at)]);
  tr.dataset.user = h.user;
  tr.dataset.resource = h.resource;
  tr.dataset.source = h.source;
  tr.dataset.presence = h.presence;
  tr.dataset.status = h.status === null || h.status === undefined ? "" : h.status;
  tr.dataset.until = h.expires_at || "";
  tr.dataset.set = h.set_at || "";
  if (!h.winning) tr.className = "loser";
  return tr;
}

function sessionRow(s) {
  return row([userLink(s.user), s.resource, s.presence, s.status, s.priority, when(s.since)]);
}

function duration(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600), m = Math.floor(secs % 3600 / 60), s = secs % 60;
  if (d > 0) return d + " d " + h + " h";
  if (h > 0) return h + " h " + m + " min";
  if (m > 0) return m + " min " + s + " s";
  return s + " s";
}

let search = "";
let lastRead = 0;      // when status.json was last asked for (ms)
let reading = false;   // a read is under way
let again = null;      // another read is wanted when it ends: "soon" (after events), "now" (search)
let timer = null;      // the scheduled read
let listening = false; // the live stream is open
const seenEvents = new Set(); // ids of the events listed

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

function showHealth(s) {
  const h = s.health;
  text("version", "v" + s.version);
  text("ready", h.ready ? "ready" : "not ready").className = h.ready ? "ok" : "fail";
  const items = h.conditions.map(c => {
    const li = document.createElement("li");
    const head = document.createElement("span");
    head.className = c.ok ? "ok" : "fail";
    head.textContent = (c.ok ? "✓ " : "✗ ") + c.name;
    li.append(head);
    if (!c.ok) {
      for (const [label, value] of [["", c.reason], ["Fix: ", c.fix], ["Next retry: ", c.next_retry ? when(c.next_retry) : ""]]) {
        if (!value) continue;
        const why = document.createElement("span");
        why.className = "why";
        why.append(label, value);
        li.append(why);
      }
    }
    return li;
  });
  document.getElementById("conditions").replaceChildren(...items);
  const link = h.link;
  text("link-state", s.link.state).className = s.link.state === "up" ? "up" : "down";
  text("link-since", when(link.since));
  text("server", link.server);
  text("component", link.component);
  text("attempts", link.attempts);
  const err = link.last_error;
  const errEl = document.getElementById("last-error");
  if (err) {
    errEl.replaceChildren(when(err.at), " " + err.error + (err.hint ? " (" + err.hint + ")" : ""));
  } else errEl.textContent = "none";
  text("next-attempt", link.next_attempt ? when(link.next_attempt) : "");
  const privs = Object.entries(h.privileges).map(([d, p]) => d + ": " + p.state + (p.roster ? " (roster " + p.roster + (p.presence ? ", presence " + p.presence : "") + ")" : ""));
  text("privileges", privs.length ? privs.join("; ") : (h.backend === "tigase" ? "not needed (Tigase backend)" : ""));
  text("uptime", duration(s.uptime_secs));
  text("started", when(s.started_at));
}

// The sparkline of updates/s, drawn as an SVG polyline.
function sparkline(values) {
  const box = document.getElementById("sparkline-box");
  if (!values || values.length < 2) { box.replaceChildren(); return; }
  const ns = "http://www.w3.org/2000/svg";
  const w = 240, h = 40, max = Math.max(1, ...values);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "updates per second, last " + values.length + " s");
  const base = document.createElementNS(ns, "line");
  base.setAttribute("x1", "0"); base.setAttribute("x2", String(w));
  base.setAttribute("y1", String(h - 1)); base.setAttribute("y2", String(h - 1));
  const line = document.createElementNS(ns, "polyline");
  const step = w / (values.length - 1);
  line.setAttribute("points", values.map((v, i) => (i * step).toFixed(1) + "," + (h - 1 - (v / max) * (h - 4)).toFixed(1)).join(" "));
  svg.append(base, line);
  const label = document.createElement("p");
  label.textContent = "Updates/s over the last " + values.length + " s: now " + values[values.length - 1] + ", peak " + Math.max(...values);
  box.replaceChildren(label, svg);
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
  showHealth(s);
  text("held-total", search ? "(" + s.held_matching + " of " + s.held_total + " match)" : "(" + s.held_total + ")");
  const held = document.getElementById("held");
  if (s.held.length === 0) held.replaceChildren(emptyRow(7, search ? "no held status matches" : "none"));
  else held.replaceChildren(...s.held.map(heldRow));
  text("held-more", s.held.length >= MAX_LISTED ? "Showing the first " + MAX_LISTED + " rows: search to narrow." : "");
  text("observed-count", search ? "(" + s.observed_matching + " of " + s.observed_sessions + " match)" : "(" + s.observed_sessions + ")");
  text("observed-note", s.complete ? "" : "The server may not have told every session (see the README, \"What the server tells\").");
  const obs = document.getElementById("observed");
  if (s.observed.length === 0) obs.replaceChildren(emptyRow(6, search ? "no session matches" : "none"));
  else obs.replaceChildren(...s.observed.map(sessionRow));
  const hooks = document.getElementById("webhooks");
  if (s.webhooks.length === 0) {
    hooks.replaceChildren(emptyRow(6, s.admin ? "none configured ([[webhooks]] in the configuration)" : "none within this key's domains"));
  } else {
    hooks.replaceChildren(...s.webhooks.map(w => row([w.name, w.pending, w.ok, w.retry, w.dropped, w.disabled ? "disabled (410)" : "active"])));
  }
  const counters = document.getElementById("counter-list");
  const items = [];
  for (const [k, v] of Object.entries(s.counters)) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd");
    const rate = s.rates_per_minute[k];
    dd.textContent = String(v) + (rate === undefined ? "" : " (" + rate + "/min)");
    items.push(dt, dd);
  }
  if (items.length === 0) {
    const dd = document.createElement("dd");
    dd.className = "empty";
    dd.textContent = "The counters over every domain are shown to admin keys.";
    items.push(dd);
  }
  counters.replaceChildren(...items);
  sparkline(s.updates_per_sec);
  if (!listening) {
    // The last events of the resume buffer, then the live stream from there.
    for (const e of s.events) showEvent(document.getElementById("events"), e, e.id);
    listening = true;
    listen(s.last_event_id);
  }
}

// Add an event to `list` (newest first), once.
function showEvent(list, e, id) {
  if (id !== undefined && id !== "") {
    if (list.id === "events") {
      if (seenEvents.has(id)) return;
      seenEvents.add(id);
    }
  }
  const li = document.createElement("li");
  li.className = "event";
  li.append(when(e.at), " ", userLink(e.user), " " + [e.presence, e.status === null || e.status === undefined ? "" : JSON.stringify(e.status), "(" + e.cause + ")"].join(" "));
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// An event carries the user's presence after the change, with every resource and its sources
// (the winning one last) but only the winning source's status: put its held (extpresence)
// resources in place of the user's rows. A losing source keeps the status its row had (read with
// the next status.json); "until" is not in the event and is kept while the same source wins.
function applyEvent(e) {
  if (typeof e.user !== "string" || !Array.isArray(e.resources)) return;
  if (search && !e.user.includes(search.toLowerCase())) return;
  const held = document.getElementById("held");
  const old = Array.from(held.children).filter(tr => tr.dataset.user === e.user);
  const rows = [];
  for (const r of e.resources.filter(r => r.origin === "extpresence")) {
    const sources = Array.isArray(r.sources) ? r.sources : [];
    const winner = sources.length ? sources[sources.length - 1] : "";
    const before = (src) => old.find(tr => tr.dataset.resource === r.resource && tr.dataset.source === src);
    const w = before(winner);
    rows.push(heldRow({ user: e.user, resource: r.resource, presence: r.presence, status: r.status, source: winner, winning: true,
      expires_at: w ? w.dataset.until : "", set_at: r.since }));
    for (const src of sources.slice(0, -1)) {
      const b = before(src);
      rows.push(heldRow({ user: e.user, resource: r.resource, presence: b ? b.dataset.presence : "…", status: b ? b.dataset.status : "",
        source: src, winning: false, expires_at: b ? b.dataset.until : "", set_at: b ? b.dataset.set : "" }));
    }
  }
  const empty = held.querySelector("td.empty");
  if (empty && rows.length > 0) empty.parentElement.remove();
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

function listen(after) {
  const list = document.getElementById("events");
  const es = new EventSource("/ui/events" + (after ? "?after=" + encodeURIComponent(after) : ""));
  es.addEventListener("open", () => text("events-state", "(live)"));
  es.addEventListener("error", () => text("events-state", "(reconnecting)"));
  es.addEventListener("presence", (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    showEvent(list, e, m.lastEventId);
    applyEvent(e);
    if (openUser && e.user === openUser) showUserSoon();
    refreshSoon(SETTLE_MS);
  });
  es.addEventListener("reset", () => refreshSoon(0));
}

// The per-user view (#user=<jid>).
let openUser = null;
// The open user's view is fetched again at most once per SETTLE_MS however many of its events
// arrive (each fetch asks the server for the roster).
let userTimer = null;
function showUserSoon() {
  if (userTimer) return;
  userTimer = setTimeout(() => {
    userTimer = null;
    if (openUser) showUser(openUser);
  }, SETTLE_MS);
}

async function showUser(jid) {
  const section = document.getElementById("user-section");
  if (!jid) { openUser = null; section.hidden = true; return; }
  openUser = jid;
  section.hidden = false;
  text("user-name", jid);
  let u;
  try {
    const r = await fetch("/ui/user.json?jid=" + encodeURIComponent(jid), { credentials: "same-origin" });
    if (r.status === 401) { location.reload(); return; }
    u = await r.json();
    if (!r.ok) throw new Error(u.error ? u.error.message : "HTTP " + r.status);
  } catch (e) {
    text("user-presence", "");
    text("user-contacts-error", String(e.message || e));
    for (const id of ["user-held", "user-sessions", "user-contacts", "user-events"]) document.getElementById(id).replaceChildren();
    return;
  }
  if (openUser !== jid) return;
  text("user-presence", "— " + u.presence + (u.status ? ": " + u.status : ""));
  const held = document.getElementById("user-held");
  if (u.held.length === 0) held.replaceChildren(emptyRow(7, "no held status"));
  else held.replaceChildren(...u.held.map(heldRow));
  const sessions = document.getElementById("user-sessions");
  if (u.sessions.length === 0) sessions.replaceChildren(emptyRow(6, u.complete ? "no session" : "no session observed (the server may not have told every session)"));
  else sessions.replaceChildren(...u.sessions.map(sessionRow));
  text("user-contacts-error", u.contacts_error ? "The contacts could not be read: " + u.contacts_error : "");
  const contacts = document.getElementById("user-contacts");
  if (u.contacts.length === 0) contacts.replaceChildren(emptyRow(5, u.contacts_error ? "unknown" : "no contact"));
  else contacts.replaceChildren(...u.contacts.map(c => row([userLink(c.jid), c.name, c.subscription,
    c.presence ? c.presence.presence : "not shown to the user (subscription " + c.subscription + ")", c.presence ? c.presence.status : ""])));
  const events = document.getElementById("user-events");
  events.replaceChildren();
  for (const e of u.events) showEvent(events, e);
  if (u.events.length === 0) {
    const li = document.createElement("li"); li.className = "empty"; li.textContent = "none in the resume buffer";
    events.append(li);
  }
}

function fromHash() {
  const m = location.hash.match(/^#user=(.+)$/);
  showUser(m ? decodeURIComponent(m[1]) : null);
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("search");
  let typing = null;
  input.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { search = input.value.trim(); refresh(); }, 300);
  });
  document.getElementById("user-close").addEventListener("click", (ev) => {
    ev.preventDefault();
    history.replaceState(null, "", location.pathname);
    showUser(null);
  });
  window.addEventListener("hashchange", fromHash);
  refresh();
  setInterval(() => refreshSoon(0), PERIOD_MS);
  fromHash();
});
