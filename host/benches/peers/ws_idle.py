#!/usr/bin/python3
"""ws_idle.py URL N HOLD_S: opens N WebSocket connections to URL, 500 at a time (the way
clients come back after a deploy), each echoing one message; prints `OPEN n` once all
are open, holds them idle for HOLD_S seconds (or until stdin closes), then closes them."""
import asyncio
import sys
import time

import websockets

URL, N, HOLD = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


async def one(conns):
    ws = await websockets.connect(URL, ping_interval=None, max_queue=1, open_timeout=60)
    await ws.send("x")
    if await ws.recv() != "x":
        raise RuntimeError("the echo did not come back")
    conns.append(ws)


async def main():
    conns = []
    t0 = time.time()
    for b in range(0, N, 500):
        await asyncio.gather(*(one(conns) for _ in range(b, min(N, b + 500))))
    print(f"OPEN {len(conns)} in {time.time() - t0:.1f}s", flush=True)
    await asyncio.sleep(HOLD)
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


asyncio.run(main())
