"""Resumable streams under load, for benchmarks/resume.sh: opens N streams through the edge,
reads the first K events of each, and then, on cue, drops every client, and resumes them.
Plain asyncio sockets (no client library), so the figures are the edge's, not a client's.

usage: resume_load.py EDGE_HOST:PORT N K
  Prints one JSON object per phase on stdout and waits for a line on stdin between phases:
  opened (N streams attached, K events read) -> dropped (all closed) -> resumed (time from
  sending the resume to the first replayed byte, per stream; all bytes then read to the end).
"""

import asyncio
import json
import sys
import time

host, port = sys.argv[1].split(":")
N, K = int(sys.argv[2]), int(sys.argv[3])
BODY = json.dumps({"model": "Qwen/Qwen3-8B", "stream": True, "max_tokens": 400,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


async def head(reader):
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    return status, hdrs


async def open_stream():
    r, w = await asyncio.open_connection(host, int(port))
    w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(BODY) + BODY)
    status, hdrs = await head(r)
    assert status == 200, status
    sid = hdrs.get("x-okome-stream-id")
    buf = b""
    while buf.count(b"\n\n") < K:
        more = await r.read(4096)
        assert more, "the stream ended early"
        buf += more
    # The last whole event's id (ours is the last line of each event); none on a plain route.
    ids = [int(l[4:]) for l in buf[:buf.rindex(b"\n\n")].split(b"\n") if l.startswith(b"id: ")]
    return sid, (ids[-1] if ids else 0), w


async def resume(sid, last):
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection(host, int(port))
    w.write(f"GET /v1/okome/streams/{sid} HTTP/1.1\r\nhost: bench\r\nlast-event-id: {last}\r\n"
            "connection: close\r\n\r\n".encode())
    status, _ = await head(r)
    first = await r.read(1)
    ttfb = time.perf_counter() - t0
    rest = first + await r.read()
    w.close()
    return status, ttfb, rest.count(b"data: [DONE]")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else None


async def main():
    loop = asyncio.get_running_loop()
    wait = lambda: loop.run_in_executor(None, sys.stdin.readline)
    opened = []
    for i in range(0, N, 100):  # a hundred at a time: the edge's accept queue stays sane
        opened += await asyncio.gather(*(open_stream() for _ in range(i, min(N, i + 100))))
    ids = sum(1 for s, _, _ in opened if s)
    print(json.dumps({"phase": "opened", "streams": N, "with_id": ids}), flush=True)
    await wait()
    for _, _, w in opened:
        w.transport.abort()  # RST, as a dropped network would look to the edge at best
    print(json.dumps({"phase": "dropped"}), flush=True)
    await wait()
    # The first streams one at a time (the latency of one resume), the rest fifty at a time
    # (resumes arriving together, as after a network blip).
    live = [(s, l) for s, l, _ in opened if s]
    alone = [await resume(s, l) for s, l in live[:20]]
    together = []
    for i in range(20, len(live), 50):
        together += await asyncio.gather(*(resume(s, l) for s, l in live[i:i + 50]))
    res = alone + together
    ms = lambda rs: [t * 1000 for s, t, _ in rs if s == 200]
    a, t = ms(alone), ms(together)
    print(json.dumps({"phase": "resumed", "ok": len(ms(res)), "statuses": sorted({r[0] for r in res}),
                      "done_once": sum(1 for r in res if r[2] == 1),
                      "one_at_a_time_ms": {"p50": pct(a, 50), "max": max(a) if a else None},
                      "fifty_at_a_time_ms": {"p50": pct(t, 50), "p99": pct(t, 99),
                                             "max": max(t) if t else None}}), flush=True)


asyncio.run(main())
