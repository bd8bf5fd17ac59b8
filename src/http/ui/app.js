// The status page: state from /ui/status.json every 2 s, events live from /ui/events.
// Every text from the server goes into the page as text (textContent), never as HTML.
"use strict";

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

let search = "";

async function refresh() {
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
  held.replaceChildren(...s.held.map(h => row([h.user, h.resource, h.presence, h.status, h.source, h.expires_at])));
  const hooks = document.getElementById("webhooks");
  if (s.webhooks.length === 0) {
    const r = row(["none configured ([[webhooks]] in the configuration)"]);
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
  counters.replaceChildren(...items);
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
    refresh();
  });
  es.addEventListener("reset", () => refresh());
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("search");
  input.addEventListener("input", () => { search = input.value.trim(); refresh(); });
  refresh();
  setInterval(refresh, 2000);
  listen();
});
