"""Nearest-neighbour search for mined image negatives: ``clipneg.generators.images.mined.nearest`` (top-k per block of
queries, one reused ``chunk x N`` score buffer; faiss ``IndexFlatIP`` when installed) against a plain full
``torch.topk`` over the whole ``Q x N`` score matrix, on the same L2-normalised random embeddings.

Each (size, method) runs in its own process, so its peak memory is its own: ``peak MiB`` is the growth of the
process's maximum resident set (``resource.getrusage``) during the first search, above what the embeddings already
hold. Neighbours are asserted equal (indices of every query, self excluded). For sizes whose full score matrix would
not fit (``--max-full-gib``; 100k x 100k float32 is 37 GiB), every method searches the same first Q queries against
all N, Q chosen so the baseline's matrix fits; the chunked search is also timed (one round) on all N queries.

    python bench/mining.py --sizes 20000 100000 --dim 512 --k 8 --chunk 1024 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def embeddings(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=-1)


def plain_topk(query: torch.Tensor, base: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the whole score matrix at once, the query's own row masked (query i is base row i)."""
    full = query @ base.T
    full[torch.arange(len(query)), torch.arange(len(query))] = -float("inf")
    return torch.topk(full, k, dim=1)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(method: str, n: int, q: int, dim: int, k: int, chunk: int, rounds: int, threads: int, out: str) -> None:
    """One (method, size) in this process: time ``rounds`` searches, record the first one's peak memory."""
    torch.set_num_threads(threads)
    from clipneg.generators.images.mined import nearest

    base = embeddings(n, dim)
    query = base[:q]
    if method == "plain":
        def search():
            return plain_topk(query, base, k)
    else:
        backend = "faiss" if method == "faiss" else "torch"

        def search():
            return nearest(query, base, k, chunk=chunk, exclude_self=True, backend=backend)
    before = max(_rss_mib(), _peak_mib())
    times = []
    for r in range(rounds):
        t0 = time.perf_counter()
        scores, idx = search()
        times.append(time.perf_counter() - t0)
        if r == 0:
            peak = _peak_mib() - before
    torch.save({"idx": idx, "scores": scores}, out + ".pt")
    Path(out + ".json").write_text(json.dumps({"times": times, "peak_mib": max(peak, 0.0)}))


def _spawn(method: str, n: int, q: int, args: argparse.Namespace, tmp: str, rounds: int | None = None) -> dict:
    out = os.path.join(tmp, f"{method}-{n}-{q}")
    cmd = [sys.executable, __file__, "--one", method, "--n", str(n), "--q", str(q), "--dim", str(args.dim),
           "--k", str(args.k), "--chunk", str(args.chunk), "--rounds", str(rounds or args.rounds), "--threads",
           str(args.threads), "--out", out]
    subprocess.run(cmd, check=True, cwd=ROOT)
    res = json.loads(Path(out + ".json").read_text())
    res.update(torch.load(out + ".pt"))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--chunk", type=int, default=1024, help="queries per block of the chunked search")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the machine's cores)")
    p.add_argument("--max-full-gib", type=float, default=2.0, help="largest full score matrix the baseline may make")
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--q", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        run_one(args.one, args.n, args.q, args.dim, args.k, args.chunk, args.rounds, args.threads, args.out)
        return 0
    sys.path.insert(0, str(ROOT))
    from clipneg.generators.images.mined import faiss_available

    methods = ["plain", "chunked"] + (["faiss"] if faiss_available() and not args.no_faiss else [])
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"D={args.dim}, k={args.k}, chunk={args.chunk}, rounds={args.rounds} (median)")
    print("| N | queries | method | median s | min s | queries/s | peak MiB | speed-up vs plain | equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            q = min(n, int(args.max_full_gib * 2**30 / (4 * n)) // 1000 * 1000 or n)
            runs = {m: _spawn(m, n, q, args, tmp) for m in methods}
            ref = runs["plain"]
            for m, r in runs.items():
                med = statistics.median(r["times"])
                equal = bool(torch.equal(r["idx"], ref["idx"]))
                ok &= equal
                speed = statistics.median(ref["times"]) / med
                print(f"| {n} | {q} | {m} | {med:.3f} | {min(r['times']):.3f} | {q / med:,.0f} | "
                      f"{r['peak_mib']:.0f} | {speed:.2f}x | {equal} |")
            if q < n:  # the chunked search over every query: the whole self-search a mining run does
                r = _spawn("chunked", n, n, args, tmp, rounds=1)  # minutes on a few cores: one round
                med = statistics.median(r["times"])
                head = bool(torch.equal(r["idx"][:q], ref["idx"]))
                ok &= head
                print(f"| {n} | {n} | chunked (all) | {med:.3f} | {min(r['times']):.3f} | {n / med:,.0f} | "
                      f"{r['peak_mib']:.0f} | n/a (plain needs {4 * n * n / 2**30:.0f} GiB) | {head} (first {q}) |")
    if not ok:
        print("NEIGHBOURS DIFFER", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
