"""An SSE client for the tests, built on httpx-sse (a real client library, not our parser).

Usage: sse_client.py URL API_KEY [LAST_EVENT_ID]

Connects to URL (e.g. http://127.0.0.1:PORT/v1/events?user=alice@localhost) with the API key,
and a Last-Event-ID header when given. Prints "connected" once the response head is in, then
one JSON line per event: {"event": ..., "id": ..., "data": ...} (data parsed when JSON), and
flushes after each. Stops at end of stream, or when stdin is closed (the test is done).
"""

import json
import sys
import threading

import httpx
from httpx_sse import connect_sse


def main() -> None:
    url, key = sys.argv[1], sys.argv[2]
    headers = {"Api-Key": key}
    if len(sys.argv) > 3:
        headers["Last-Event-ID"] = sys.argv[3]

    # The test ends us by closing stdin.
    def watch_stdin() -> None:
        sys.stdin.read()
        import os

        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()

    with httpx.Client(timeout=httpx.Timeout(5.0, read=60.0)) as client:
        with connect_sse(client, "GET", url, headers=headers) as source:
            source.response.raise_for_status()
            print("connected", flush=True)
            for sse in source.iter_sse():
                try:
                    data = json.loads(sse.data)
                except ValueError:
                    data = sse.data
                print(
                    json.dumps({"event": sse.event, "id": sse.id, "data": data}),
                    flush=True,
                )
    print("end", flush=True)


if __name__ == "__main__":
    main()
