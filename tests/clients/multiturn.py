"""Multi-turn chat workload through the official OpenAI Python SDK (streaming).

Many conversations, several at once, each resending its whole growing history every turn (as a
chat UI does), all sharing one system prompt. Measures TTFT per request as the client sees it
(request sent -> first content delta) and prints one JSON object:

  {"requests": N, "errors": 0, "ttft_ms": {"p50": .., "p90": .., "p99": .., "mean": ..}}

Used by tests/prefix_affinity.rs and benchmarks/prefix_affinity.sh.
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

import openai

WORDS = (
    "latency cache prefix token stream replica model prompt budget queue gpu kernel batch "
    "window context request answer question history policy routing engine block memory"
).split()


def text(rng: random.Random, n_bytes: int, head: str) -> str:
    out = [head]
    size = len(head)
    while size < n_bytes:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


async def conversation(client, args, c: int, system: str, ttfts: list, errors: list) -> None:
    rng = random.Random(args.seed * 1_000_003 + c)
    history = [{"role": "system", "content": system}]
    for t in range(args.turns):
        history.append(
            {"role": "user", "content": text(rng, args.user_bytes, f"conversation {c} turn {t}:")}
        )
        start = time.perf_counter()
        first = None
        reply = []
        try:
            stream = await client.chat.completions.create(
                model=args.model,
                messages=history,
                max_tokens=args.max_tokens,
                stream=True,
            )
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta.content
                if delta:
                    if first is None:
                        first = time.perf_counter()
                    reply.append(delta)
        except openai.APIError as e:
            errors.append(f"conversation {c} turn {t}: {e}")
            return
        if first is None:
            errors.append(f"conversation {c} turn {t}: no token")
            return
        ttfts.append((first - start) * 1000.0)
        history.append({"role": "assistant", "content": "".join(reply)})


def pct(xs: list, p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default="Qwen/Qwen3-8B")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--conversations", type=int, default=24)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--system-bytes", type=int, default=400)
    ap.add_argument("--user-bytes", type=int, default=600)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    system = text(random.Random(args.seed), args.system_bytes, "You are a helpful assistant.")
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    ttfts, errors = [], []
    sem = asyncio.Semaphore(args.concurrency)

    async def one(c: int) -> None:
        async with sem:
            await conversation(client, args, c, system, ttfts, errors)

    await asyncio.gather(*(one(c) for c in range(args.conversations)))
    await client.close()
    out = {
        "requests": len(ttfts),
        "errors": len(errors),
        "ttft_ms": {
            "p50": pct(ttfts, 50) if ttfts else None,
            "p90": pct(ttfts, 90) if ttfts else None,
            "p99": pct(ttfts, 99) if ttfts else None,
            "mean": statistics.fmean(ttfts) if ttfts else None,
        },
    }
    print(json.dumps(out))
    for e in errors[:5]:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
