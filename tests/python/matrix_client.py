"""A Matrix client for the tests: matrix-nio (a real Matrix client library) against extpresence.

Usage: matrix_client.py HOMESERVER_URL ACCESS_TOKEN USER_ID COMMAND...
  set PRESENCE [STATUS_MSG]   -> client.set_presence
  get USER_ID                 -> client.get_presence
Prints one JSON line per command: the response's type and fields.
"""

import asyncio
import json
import sys

from nio import AsyncClient


async def main() -> None:
    url, token, user_id = sys.argv[1:4]
    args = sys.argv[4:]
    client = AsyncClient(url, user_id)
    client.access_token = token
    client.user_id = user_id
    try:
        while args:
            cmd = args.pop(0)
            if cmd == "set":
                presence = args.pop(0)
                msg = args.pop(0) if args and args[0] not in ("set", "get") else None
                r = await client.set_presence(presence, msg)
            elif cmd == "get":
                r = await client.get_presence(args.pop(0))
            else:
                raise SystemExit(f"unknown command {cmd}")
            fields = {
                k: v
                for k, v in vars(r).items()
                if k != "transport_response" and isinstance(v, (str, int, bool, type(None)))
            }
            print(json.dumps({"type": type(r).__name__, **fields}), flush=True)
    finally:
        await client.close()


asyncio.run(main())
