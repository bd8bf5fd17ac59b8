"""Drive a real headless Chromium (Debian's) over the DevTools protocol against the status page.

Usage: browser.py BASE_URL KEY SCREENSHOT_PATH

Signs in with KEY through the login form, waits until the page shows its data, prints "ready",
then reads commands from stdin, one per line:
- "expect <text>": waits (at most 5 s) until <text> shows on the page; prints {"text":…, "seen_ms":…}.
- "row <user> <status>": waits (at most 5 s) until the held statuses show a row of <user> with the
  status text <status>; prints {"row":…, "seen_ms":…, "status_fetches":…} (the reads of
  /ui/status.json the page had made when it showed the row).
- "hold": from now on the page's reads of /ui/status.json are held unanswered (DevTools Fetch
  interception), so what changes on the page comes from the event stream; prints {"held": true}.
- "release": lets the held reads through and stops holding; prints {"released": n}.
- "count": prints {"status_fetches": n}, the reads of /ui/status.json the page has made so far.
- "events": prints {"events": [...]}, the texts of the recent events list.
- "times": prints {"offset": minutes, "times": [{"text":…, "title":…, "datetime":…}]}: the
  page's <time> elements (the page runs in Asia/Kolkata, UTC+05:30) and the browser's offset.
- "open <jid>": opens the user's view (#user=<jid>) and waits (at most 10 s) until its contacts
  (or why they could not be read) show; prints {"held": [[cells]…], "sessions": […],
  "contacts": […], "contacts_error": text, "events": [texts]}.
- "layout <width> <height> <path>": resizes the viewport (a phone below 600 px), saves a
  screenshot of the whole page at <path> and prints {"scroll_width", "inner_width", "tables":
  [{"id", "width", "box", "scrolls", "fits"}]}: each visible table's width, its container's, and
  whether the container scrolls sideways.
On "end" (or EOF) it checks how user text rendered, saves a screenshot and prints
{"dialogs":…, "script_elements":…, "screenshot":…}.
Everything printed is one JSON object (or "ready") per line.
"""

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from websockets.sync.client import connect


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        for d in os.environ.get("PATH", "").split(os.pathsep):
            p = os.path.join(d, name)
            if os.access(p, os.X_OK):
                return p
    sys.exit("chromium is not installed (apt-get install chromium; scripts/install-deps.sh does)")


class Page:
    def __init__(self, ws_url):
        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=10)
        self.next_id = 0
        self.dialogs = []
        # Requests for /ui/status.json the page sent (Network.requestWillBeSent).
        self.status_fetches = 0
        # Requests held by Fetch interception ("hold"), to let through on "release".
        self.paused = []

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.time() + 30
        while time.time() < deadline:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("method") == "Network.requestWillBeSent":
                if "/ui/status.json" in msg["params"]["request"]["url"]:
                    self.status_fetches += 1
            if msg.get("method") == "Fetch.requestPaused":
                self.paused.append(msg["params"]["requestId"])
            if msg.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(msg["params"].get("message"))
                self.ws.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}))
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise TimeoutError(method)

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")

    def wait(self, expression, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.eval(expression):
                return True
            time.sleep(0.05)
        return False


def main():
    base, key, shot = sys.argv[1], sys.argv[2], sys.argv[3]
    profile = tempfile.mkdtemp(prefix="extpresence-chromium-")
    proc = subprocess.Popen(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1400,1000", "--lang=en-US", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.time() + 30
        while time.time() < deadline and port is None:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
        if port is None:
            sys.exit("chromium did not open its DevTools port")
        import urllib.request
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Network.enable")
        page.call("Emulation.setTimezoneOverride", timezoneId="Asia/Kolkata")
        try:
            page.call("Emulation.setLocaleOverride", locale="en-US")
        except RuntimeError:
            pass  # older Chromium: --lang=en-US above
        page.call("Page.navigate", url=base + "/")
        if not page.wait("document.readyState === 'complete' && !!document.getElementById('key')", 15):
            sys.exit("the login form did not show")
        page.eval(f"document.getElementById('key').value = {json.dumps(key)}; document.querySelector('form').submit(); true")
        if not page.wait("!!document.getElementById('held') && document.getElementById('link-state').textContent === 'up'", 15):
            sys.exit("the page did not show the link after signing in: " + str(page.eval("document.body.innerText")))
        print("ready", flush=True)
        for line in sys.stdin:
            line = line.strip()
            if line == "end":
                break
            if line.startswith("expect "):
                text = line[len("expect "):]
                start = time.time()
                seen = page.wait(f"document.body.innerText.includes({json.dumps(text)})", 5)
                print(json.dumps({"text": text, "seen_ms": int((time.time() - start) * 1000) if seen else None}), flush=True)
            elif line.startswith("row "):
                user, status = line[len("row "):].split(" ", 1)
                start = time.time()
                seen = page.wait(
                    "Array.from(document.querySelectorAll('#held tr')).some(tr => "
                    f"tr.cells.length > 3 && tr.cells[0].textContent === {json.dumps(user)} && "
                    f"tr.cells[3].textContent === {json.dumps(status)})", 5)
                print(json.dumps({"row": user, "seen_ms": int((time.time() - start) * 1000) if seen else None,
                                  "status_fetches": page.status_fetches}), flush=True)
            elif line == "hold":
                page.call("Fetch.enable", patterns=[{"urlPattern": "*/ui/status.json*", "requestStage": "Request"}])
                print(json.dumps({"held": True}), flush=True)
            elif line == "release":
                n = len(page.paused)
                for rid in page.paused:
                    page.call("Fetch.continueRequest", requestId=rid)
                page.paused = []
                page.call("Fetch.disable")
                print(json.dumps({"released": n}), flush=True)
            elif line == "events":
                print(json.dumps({"events": page.eval("Array.from(document.querySelectorAll('#events li')).map(li => li.textContent)")}), flush=True)
            elif line == "times":
                print(json.dumps({"offset": page.eval("new Date().getTimezoneOffset()"), "times": page.eval(
                    "Array.from(document.querySelectorAll('time')).map(t => ({text: t.textContent, title: t.title, datetime: t.dateTime}))")}), flush=True)
            elif line.startswith("open "):
                jid = line[len("open "):]
                page.eval(f"location.hash = '#user=' + encodeURIComponent({json.dumps(jid)}); true")
                page.wait("!document.getElementById('user-section').hidden && "
                          f"document.getElementById('user-name').textContent === {json.dumps(jid)} && "
                          "(document.querySelectorAll('#user-contacts tr').length > 0 || "
                          "document.getElementById('user-contacts-error').textContent !== '')", 10)
                cells = "Array.from(document.querySelectorAll('{} tr')).map(tr => Array.from(tr.cells).map(c => c.textContent))"
                print(json.dumps({
                    "held": page.eval(cells.format("#user-held")),
                    "sessions": page.eval(cells.format("#user-sessions")),
                    "contacts": page.eval(cells.format("#user-contacts")),
                    "contacts_error": page.eval("document.getElementById('user-contacts-error').textContent"),
                    "events": page.eval("Array.from(document.querySelectorAll('#user-events li')).map(li => li.textContent)"),
                }), flush=True)
            elif line.startswith("layout "):
                _, width, height, path = line.split(" ", 3)
                width, height = int(width), int(height)
                page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                          deviceScaleFactor=1, mobile=width < 600)
                page.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
                measured = page.eval("""(() => {
                  const tables = Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent !== null).map(t => {
                    const box = t.parentElement;
                    const scrolls = ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
                    return {id: t.id, width: Math.ceil(t.getBoundingClientRect().width), box: box.clientWidth, scrolls,
                            fits: t.getBoundingClientRect().right <= box.getBoundingClientRect().right + 0.5};
                  });
                  return {scroll_width: document.documentElement.scrollWidth, inner_width: innerWidth, tables};
                })()""")
                png = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
                with open(path, "wb") as f:
                    f.write(base64.b64decode(png))
                measured["screenshot"] = path
                print(json.dumps(measured), flush=True)
            elif line == "count":
                page.eval("true")  # take in the events that came meanwhile
                print(json.dumps({"status_fetches": page.status_fetches}), flush=True)
        scripts = page.eval("Array.from(document.querySelectorAll('script')).map(s => s.getAttribute('src') || ('inline:' + s.textContent))")
        shown = page.eval("document.body.innerText")
        png = page.call("Page.captureScreenshot", format="png")["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png))
        print(json.dumps({"dialogs": page.dialogs, "scripts": scripts, "text": shown, "screenshot": shot}), flush=True)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
