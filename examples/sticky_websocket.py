#!/usr/bin/env python3
"""Shows cookie affinity on WebSockets: connects to a weir pool that pins clients with the
`cookie` affinity plugin (the demo's /sticky route), then reconnects N times sending the
cookie it was given, and prints which backend echoed each time.

    python3 examples/sticky_websocket.py ws://127.0.0.1:8080/sticky [N]

Needs Python's `websockets` (Debian: apt-get install python3-websockets).
"""
import asyncio
import sys

import websockets

NEW_API = int(websockets.__version__.split(".")[0]) >= 14


async def visit(url, cookie):
    """One WebSocket: returns the backend that echoed and the Set-Cookie of the 101."""
    headers = {"Cookie": cookie} if cookie else {}
    if NEW_API:
        ws = await websockets.connect(url, additional_headers=headers)
        set_cookie = ws.response.headers.get("Set-Cookie")
    else:
        ws = await websockets.connect(url, extra_headers=headers)
        set_cookie = ws.response_headers.get("Set-Cookie")
    try:
        await ws.send("hello")
        echo = await ws.recv()
    finally:
        await ws.close()
    return echo.split(":")[0], set_cookie


async def main(url, n):
    home, set_cookie = await visit(url, None)
    if set_cookie is None:
        sys.exit("no Set-Cookie on the 101: is this a pool with `affinity = { plugin = \"cookie\" }`?")
    cookie = set_cookie.split(";")[0]
    print(f"first visit: {home}, given cookie {cookie}")
    same = 0
    for i in range(n):
        backend, again = await visit(url, cookie)
        same += backend == home
        print(f"reconnect {i + 1}: {backend}" + (" (new cookie)" if again else ""))
    print(f"{same} of {n} reconnects landed on {home}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5))
