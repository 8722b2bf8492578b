"""A TCP forwarder that adds latency, for the W2 run "as between a controller and a remote
site" (issue 14).

This kernel has no ``sch_netem`` (``tc qdisc add ... netem`` fails: "Specified qdisc kind is
unknown"), so the latency is added in user space: one listener per fleet host on its own loopback
address (metalchain refuses two hosts with one address),
each forwarding to the host's sshd and holding every chunk ``one_way_ms`` before passing it
on, in both directions (round trip + 2 x one_way_ms). Chunks keep their order and are not
coalesced; bandwidth is not limited. All three tools' SSH connections go through it.

Run: ``python -m peerkit.delay --one-way-ms 5 --map 127.0.131.1:22600=10.131.0.100:22 ...``;
it prints
``ready`` once every listener is bound and runs until SIGTERM/SIGINT, then prints
``connections N`` (how many it forwarded: proof that the tools went through it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence

CHUNK = 65536


def parse_map(items: Sequence[str], listen: str = "127.0.0.1"
              ) -> dict[tuple[str, int], tuple[str, int]]:
    """``[LISTEN_ADDRESS:]LISTEN_PORT=ADDRESS:PORT`` items.

    >>> parse_map(["22600=10.131.0.100:22", "127.0.131.2:22600=10.131.0.101:22"])
    {('127.0.0.1', 22600): ('10.131.0.100', 22), ('127.0.131.2', 22600): ('10.131.0.101', 22)}
    """
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for item in items:
        source, _, target = item.partition("=")
        l_addr, _, l_port = source.rpartition(":")
        addr, _, port = target.rpartition(":")
        if not (l_port.isdigit() and addr and port.isdigit()):
            raise ValueError(f"not [LISTEN_ADDRESS:]LISTEN_PORT=ADDRESS:PORT: {item!r}")
        out[(l_addr or listen, int(l_port))] = (addr, int(port))
    return out


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
                ) -> None:
    """Copy reader to writer, each chunk ``delay`` seconds after it arrived."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                return

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    rx = asyncio.create_task(receive())
    try:
        await send()
    finally:
        rx.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await rx


def handler(target: tuple[str, int], one_way: float, tally: list[int] | None = None,
            connect_timeout: float = 10.0):
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if tally is not None:
            tally[0] += 1
        try:
            h_reader, h_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), connect_timeout)
        except (OSError, TimeoutError):
            c_writer.close()
            return
        try:
            await asyncio.gather(_pipe(c_reader, h_writer, one_way),
                                 _pipe(h_reader, c_writer, one_way),
                                 return_exceptions=True)
        finally:
            for w in (h_writer, c_writer):
                w.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()
    return handle


async def serve(mapping: dict[tuple[str, int], tuple[str, int]], one_way: float,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                tally: list[int] | None = None) -> None:
    """Forward until ``stop``; ``tally[0]`` counts the connections accepted."""
    servers = [await asyncio.start_server(handler(target, one_way, tally), host, port)
               for (host, port), target in mapping.items()]
    if ready is not None:
        ready.set()
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one-way-ms", type=float, required=True)
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--map", nargs="+", required=True, metavar="PORT=ADDR:PORT")
    args = ap.parse_args(argv)
    mapping = parse_map(args.map, args.listen)

    async def run() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tally = [0]
        task = asyncio.create_task(serve(mapping, args.one_way_ms / 1000, ready, stop, tally))
        await ready.wait()
        print("ready", flush=True)
        await task
        print(f"connections {tally[0]}", flush=True)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
