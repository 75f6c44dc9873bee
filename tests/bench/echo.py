"""The reference server: a minimal asyncio newline-JSON echo on a socket.

It does the least a JSON-RPC server must do for a ping: read a line,
parse it, answer ``{"jsonrpc": "2.0", "id": <id>, "result": true}``.  No
task per request, no validation, no dispatch: the floor that Python and
asyncio streams set on this machine.  Run
``python -m tests.bench.echo SOCKET``;
it prints ``ready`` once it listens and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while line := await reader.readline():
            request = json.loads(line)
            writer.write(
                json.dumps(
                    {"jsonrpc": "2.0", "id": request.get("id"), "result": True}
                ).encode()
                + b"\n"
            )
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(path: str) -> None:
    """Serve on the Unix socket ``path`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_unix_server(_serve, path)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
