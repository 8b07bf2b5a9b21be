"""HTTP load generators for the serving benchmark: open loop, closed loop and a malformed-request mix."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from typing import Any


def requests_to(path: str, bodies: list[dict[str, Any]] | None, token: str) -> list[bytes]:
    """Ready HTTP/1.1 requests (keep-alive): POST ``path`` with each body, or one GET when ``bodies`` is None."""
    head = f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
    if bodies is None:
        return [f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()]
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        lines = f"POST {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        out.append(f"{lines}\r\n".encode() + data)
    return out


class Connection:
    """One keep-alive connection speaking just enough HTTP/1.1 to time a server, not the client.

    A general-purpose client (httpx) spends about a millisecond of CPU per request in Python: on two cores shared
    with the server it would be the bottleneck being measured.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: Any = None
        self.writer: Any = None

    async def send(self, request: bytes) -> int:
        return (await self.exchange(request))[0]

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        import asyncio

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def load_run(port: int, requests: list[bytes], rate: float, seconds: float, connections: int = 32) -> dict[str, float]:
    """Open-loop load: one request every 1/rate s for ``seconds``; latency measured from the intended send time.

    Timing from the schedule (not from when a request actually left) keeps a stalled server from hiding its
    queue (coordinated omission).
    """
    import asyncio

    import numpy as np

    async def main() -> dict[str, float]:
        pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(connections):
            pool.put_nowait(Connection(port))
        latencies: list[float] = []
        errors = 0

        async def one(i: int, due: float) -> None:
            nonlocal errors
            connection = await pool.get()
            try:
                status = await connection.send(requests[i % len(requests)])
                errors += status != 200
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                errors += 1
                connection.close()
                connection = Connection(port)
            latencies.append(time.perf_counter() - due)
            pool.put_nowait(connection)

        total = int(rate * seconds)
        started = time.perf_counter()
        tasks = []
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        while not pool.empty():
            pool.get_nowait().close()
        values = np.asarray(latencies) * 1000
        return {
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "errors": float(errors),
            "requests": float(total),
            "achieved_rps": total / elapsed,
        }

    return asyncio.run(main())


def saturation(port: int, requests: list[bytes], seconds: float, workers: int = 16) -> dict[str, float]:
    """Closed-loop load: ``workers`` connections each sending the next request as soon as one returns."""
    import asyncio

    async def main() -> dict[str, float]:
        done = errors = 0
        stop_at = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done, errors
            connection, i = Connection(port), offset
            try:
                while time.perf_counter() < stop_at:
                    errors += await connection.send(requests[i % len(requests)]) != 200
                    done += 1
                    i += workers
            finally:
                connection.close()

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        return {"rps": done / (time.perf_counter() - started), "errors": float(errors)}

    return asyncio.run(main())


def client_process(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """Run a load generator in a fresh interpreter (spawned) and return its figures."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def malformed(bodies: list[dict[str, Any]], token: str) -> list[bytes]:
    """Bad requests of every kind a client gets wrong, each answerable only with a 4xx and a reason."""
    good = bodies[0]
    key = next(iter(good))
    broken: list[dict[str, Any] | str] = [
        {k: v for k, v in good.items() if k != list(good)[1]},  # a required field missing
        {**good, list(good)[1]: "lots"},  # a number that is text
        {**good, list(good)[1]: -1e12},  # out of the contract's range
        {**good, "favourite_colour": "red"},  # a field the contract does not know
        {**good, key: 987_654_321_987},  # an entity nobody knows (404)
        '{"customer_id": 1, ',  # not JSON at all
        {**good, "padding": "x" * 300_000},  # over the body limit (413)
    ]
    out = []
    for body in broken:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        head = f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        out.append(f"{head}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return out


def reliability(port: int, good: list[bytes], bad: list[bytes], total: int = 10_000) -> dict[str, float]:
    """``total`` requests, every hundredth malformed: count 5xx, and malformed ones answered 4xx with a reason."""
    import asyncio

    plan = [(bad[(i // 100) % len(bad)], True) if i % 100 == 99 else (good[i % len(good)], False) for i in range(total)]

    async def main() -> dict[str, float]:
        counts = {"ok": 0, "server_errors": 0, "malformed": 0, "malformed_4xx_with_reason": 0, "other": 0}
        queue: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def worker() -> None:
            connection = Connection(port)
            try:
                while not queue.empty():
                    request, malformed = queue.get_nowait()
                    status, body = await connection.exchange(request)
                    if status >= 500:
                        counts["server_errors"] += 1
                    if malformed:
                        counts["malformed"] += 1
                        counts["malformed_4xx_with_reason"] += 400 <= status < 500 and b'"detail"' in body
                    elif status == 200:
                        counts["ok"] += 1
                    else:
                        counts["other"] += 1
                    if status in (413,) or b"Connection: close" in body:
                        connection.close()
                        connection = Connection(port)
            finally:
                connection.close()

        await asyncio.gather(*(worker() for _ in range(8)))
        return {k: float(v) for k, v in counts.items()}

    return asyncio.run(main())
