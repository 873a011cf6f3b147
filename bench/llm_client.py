"""LLM client throughput: clipneg's OpenAIBackend vs a bare asyncio + httpx loop, against the same scripted server.

The server (tests/openai_server.py) runs in its own process, so its threads do not share the clients' GIL, and
answers every ``/v1/chat/completions`` after a fixed delay (default 20 ms), standing in for model latency. For each
N requests in flight, both clients send the same request bodies (real clipneg prompts, seeded); rounds alternate
between the two so that machine noise hits both; each round opens a fresh connection pool. The figures are
requests/s, best and median over rounds (best is the least disturbed on a shared machine); the ratio ours/bare of
the best is what the client's semaphore, retry bookkeeping, response parsing and the sync-over-private-loop hop
cost. Goal: >= 0.95. When the server saturates (at high N on few cores) both clients measure the server.

    python bench/llm_client.py                            # N = 1, 8, 32; 20 ms per request; 5 rounds
    python bench/llm_client.py --in-flight 1 8 32 64 --delay 0.05 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipneg.generators.llm import ChatRequest, OpenAIBackend, RetryPolicy, build_messages, load_template  # noqa: E402
from clipneg.generators.llm.backends import SEED_MODULUS  # noqa: E402


def make_requests(n: int) -> list[ChatRequest]:
    t = load_template("replace_att")
    out = []
    for i in range(n):
        caption = f"a red cube left of a blue ball number {i}"
        seed = (i * 2654435761) % SEED_MODULUS
        out.append(ChatRequest(tuple(build_messages(t, caption, seed, 3)), seed, 160, 0.7, t.response_format()))
    return out


def ours(url: str, requests: list[ChatRequest], n: int) -> float:
    backend = OpenAIBackend(url, "bench-model", api_key_env=None, max_in_flight=n, timeout=30.0,
                            retry=RetryPolicy(retries=2))
    try:
        t0 = time.perf_counter()
        results = backend.complete(requests)
        elapsed = time.perf_counter() - t0
    finally:
        backend.close()
    assert all(r.error is None and r.text for r in results), "a request failed: the server is overloaded"
    return len(requests) / elapsed


def bare(url: str, requests: list[ChatRequest], n: int) -> float:
    import httpx

    bodies = [{"model": "bench-model", "messages": list(r.messages), "max_tokens": r.max_tokens,
               "temperature": r.temperature, "seed": r.seed, "stream": False, "response_format": r.response_format}
              for r in requests]

    async def main() -> list[str]:
        sem = asyncio.Semaphore(n)
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, pool=None)) as client:
            async def one(body: dict) -> str:
                async with sem:
                    resp = await client.post(f"{url}/chat/completions", json=body)
                resp.raise_for_status()
                return resp.json()["choices"][0]["message"]["content"]

            return await asyncio.gather(*(one(b) for b in bodies))

    t0 = time.perf_counter()
    texts = asyncio.run(main())
    elapsed = time.perf_counter() - t0
    assert all(texts)
    return len(requests) / elapsed


def start_server(delay: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--delay", str(delay)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the scripted server did not start (got {url!r})")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--delay", type=float, default=0.02, help="server seconds per request")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.6, help="target length of one round at the ideal rate")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    proc, url = start_server(args.delay)
    rows = []
    try:
        ours(url, make_requests(8), 4), bare(url, make_requests(8), 4)  # warm up both paths and the server
        for n in args.in_flight:
            count = max(20, int(args.seconds * n / args.delay))
            count = min(count, 2000)
            requests = make_requests(count)
            a, b = [], []
            for _ in range(args.rounds):
                a.append(ours(url, requests, n))
                b.append(bare(url, requests, n))
            rows.append({"in_flight": n, "requests": count, "ours_best": round(max(a), 1),
                         "bare_best": round(max(b), 1), "ours_median": round(statistics.median(a), 1),
                         "bare_median": round(statistics.median(b), 1), "ideal": round(n / args.delay, 1),
                         "ratio_best": round(max(a) / max(b), 3),
                         "ratio_median": round(statistics.median(a) / statistics.median(b), 3)})
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(f"# LLM client vs bare httpx, server delay {args.delay * 1000:g} ms, {args.rounds} rounds, "
          f"{platform.node()} {os.cpu_count()} CPUs, python {platform.python_version()}")
    print("| in flight | requests | ours req/s best (median) | bare req/s best (median) | ideal | ours/bare best "
          "(median) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['in_flight']} | {r['requests']} | {r['ours_best']} ({r['ours_median']}) | {r['bare_best']} "
              f"({r['bare_median']}) | {r['ideal']} | {r['ratio_best']:.3f} ({r['ratio_median']:.3f}) |")
    if args.json:
        args.json.write_text(json.dumps({"delay": args.delay, "rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
