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
         "--window-size=1400,1000", "about:blank"],
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
