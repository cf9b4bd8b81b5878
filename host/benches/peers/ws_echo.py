#!/usr/bin/python3
"""ws_echo.py PORT: a WebSocket echo server on 127.0.0.1:PORT (Debian's python3-websockets),
the backend of the idle-WebSocket memory part of host/benches/peers/peers.py."""
import asyncio
import sys

import websockets


async def echo(ws, path=None):
    async for m in ws:
        await ws.send(m)


async def main():
    async with websockets.serve(echo, "127.0.0.1", int(sys.argv[1]), backlog=4096, ping_interval=None, max_queue=1):
        await asyncio.Future()


asyncio.run(main())
