"""Nearest-neighbour search for mined image negatives: ``clipneg.generators.images.mined.nearest`` (top-k per block of
queries, one reused ``chunk x N`` score buffer; faiss ``IndexFlatIP`` when installed) against a plain full
``torch.topk`` over the whole ``Q x N`` score matrix, on the same L2-normalised random embeddings.

Methods (see :func:`searcher`): ``plain``, ``nearest`` (a self-search uses each block pair of ``x @ x.T`` for both
blocks' rows: half the multiply-adds), ``nearest-blocks`` (query blocks against all rows, the stage's per-chunk
path) and ``faiss`` when installed. Timed rounds alternate between methods in one process so machine noise hits all
(median and min wall seconds, and median CPU seconds of the process: a machine shared with other jobs stretches
wall time most). ``peak MiB`` comes from one more search of each method in a fresh process: the growth of its
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` just before) above what it held before.
Neighbours (indices of every query, self excluded) are asserted equal to the plain ones, up to exact ties
(:func:`same_neighbours`; the table counts rows with identical indices). For sizes whose full score matrix would not
fit (``--max-full-gib``; 100k x 100k float32 is 37 GiB) every method searches the same first Q queries against all
N, Q chosen so the baseline's matrix fits, and the self-search is also run once on all N rows.

    python bench/mining.py --sizes 20000 100000 --dim 512 --k 8 --chunk 1024 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    """Random unit rows, made in blocks so that making them peaks at their own size (memory figures start there)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for i in range(0, n, 8192):
        out[i:i + 8192] = F.normalize(torch.randn(min(8192, n - i), dim, generator=g), dim=-1)
    return out


def same_neighbours(query: torch.Tensor, base: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor],
                    got: tuple[torch.Tensor, torch.Tensor], atol: float = 1e-5) -> tuple[bool, int]:
    """(the same neighbours up to exact ties, rows with identical indices). Two float pipelines may order two
    neighbours whose cosines differ by ~1e-7 differently; everything else must agree: each returned score is the
    true cosine of its returned index, and the score lists equal the reference's."""
    (rs, ri), (gs, gi) = ref, got
    identical = int((ri == gi).all(1).sum())
    if identical == len(ri):
        return True, identical
    true = torch.einsum("qd,qkd->qk", query, base[gi])
    ok = torch.allclose(true, gs, atol=atol, rtol=0) and torch.allclose(gs, rs, atol=atol, rtol=0)
    return bool(ok), identical


def plain_topk(query: torch.Tensor, base: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the whole score matrix at once, the query's own row masked (query i is base row i)."""
    full = query @ base.T
    full[torch.arange(len(query)), torch.arange(len(query))] = -float("inf")
    return torch.topk(full, k, dim=1)


METHODS = ("plain", "nearest", "nearest-blocks", "faiss")


def searcher(method: str, base: torch.Tensor, q: int, k: int, chunk: int):
    """A no-argument search of the first q rows of base against all of base, self excluded.

    plain: one full ``Q x N`` matrix and ``torch.topk``; nearest: ``nearest(base, base, ...)`` (a self-search when
    q == N: each block pair once, for both blocks' rows); nearest-blocks: ``nearest(base[:q], base, ...)`` (blocks of
    queries against all rows: what the stage does per chunk); faiss: ``nearest(..., backend="faiss")``.
    """
    from clipneg.generators.images.mined import nearest

    query = base if q == len(base) else base[:q]
    if method == "plain":
        return lambda: plain_topk(query, base, k)
    if method == "nearest":
        return lambda: nearest(query, base, k, chunk=chunk, exclude_self=True, backend="torch")
    if method == "nearest-blocks":
        view = base[:q]  # a new tensor object even when q == N, so not the self-search path
        return lambda: nearest(view, base, k, chunk=chunk, exclude_self=True, backend="torch")
    if method == "faiss":
        return lambda: nearest(query, base, k, chunk=chunk, exclude_self=True, backend="faiss")
    raise ValueError(method)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    # VmHWM (the peak resident set) restarts from the current one; ru_maxrss cannot: Linux keeps it across execve,
    # so a child would report its parent's peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_one(method: str, n: int, q: int, dim: int, k: int, chunk: int, threads: int, out: str) -> None:
    """One search in a fresh process: its time and the growth of the peak resident set, and its neighbours."""
    torch.set_num_threads(threads)
    base = embeddings(n, dim)
    search = searcher(method, base, q, k, chunk)
    _reset_peak()
    before = _status_mib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    scores, idx = search()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = max(_status_mib("VmHWM") - before, 0.0)
    torch.save({"idx": idx, "scores": scores}, out + ".pt")
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak}))


def _spawn(method: str, n: int, q: int, args: argparse.Namespace, tmp: str) -> dict:
    out = os.path.join(tmp, f"{method}-{n}-{q}")
    cmd = [sys.executable, __file__, "--one", method, "--n", str(n), "--q", str(q), "--dim", str(args.dim),
           "--k", str(args.k), "--chunk", str(args.chunk), "--threads", str(args.threads), "--out", out]
    subprocess.run(cmd, check=True, cwd=ROOT)
    res = json.loads(Path(out + ".json").read_text())
    res.update(torch.load(out + ".pt"))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--chunk", type=int, default=1024, help="rows per block of nearest")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per method, alternating between methods")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the machine's cores)")
    p.add_argument("--max-full-gib", type=float, default=2.0, help="largest full score matrix the baseline may make")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--q", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        run_one(args.one, args.n, args.q, args.dim, args.k, args.chunk, args.threads, args.out)
        return 0
    sys.path.insert(0, str(ROOT))
    from clipneg.generators.images.mined import faiss_available

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods if m != "faiss" or faiss_available()]
    if "plain" not in methods:
        methods.insert(0, "plain")
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} threads, faiss "
          f"{'yes' if faiss_available() else 'no'}, D={args.dim}, k={args.k}, chunk={args.chunk}, "
          f"{args.rounds} alternating rounds (median, min); peak MiB from a separate fresh process per row")
    print("| N | queries | method | median s | min s | CPU s | queries/s | peak MiB | "
          "speed-up vs plain (median / min / CPU) | same neighbours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            q = min(n, int(args.max_full_gib * 2**30 / (4 * n)) // 1000 * 1000 or n)
            base = embeddings(n, args.dim)
            searches = {m: searcher(m, base, q, args.k, args.chunk) for m in methods}
            times: dict[str, list[float]] = {m: [] for m in methods}
            cpu: dict[str, list[float]] = {m: [] for m in methods}
            found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for _ in range(args.rounds):
                for m, search in searches.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    result = search()
                    times[m].append(time.perf_counter() - t0)
                    cpu[m].append(time.process_time() - c0)
                    found[m] = result
                    del result
            ref = found["plain"]
            query = base[:q]
            med_plain, min_plain = statistics.median(times["plain"]), min(times["plain"])
            cpu_plain = statistics.median(cpu["plain"])
            for m in methods:
                mem = _spawn(m, n, q, args, tmp)
                med = statistics.median(times[m])
                equal, identical = same_neighbours(query, base, ref, found[m])
                again = torch.equal(mem["idx"], found[m][1])  # a fresh process finds the same
                ok &= equal and again
                c = statistics.median(cpu[m])
                print(f"| {n} | {q} | {m} | {med:.3f} | {min(times[m]):.3f} | {c:.2f} | {q / med:,.0f} | "
                      f"{mem['peak_mib']:.0f} | {med_plain / med:.2f}x / {min_plain / min(times[m]):.2f}x / "
                      f"{cpu_plain / c:.2f}x | {equal and again} ({identical}/{q} rows identical) |", flush=True)
            del searches, found
            if q < n:  # the whole self-search a mining run needs, where the plain matrix cannot exist
                r = _spawn("nearest", n, n, args, tmp)
                head, identical = same_neighbours(query, base, ref, (r["scores"][:q], r["idx"][:q]))
                ok &= head
                need = 4 * n * n / 2**30
                print(f"| {n} | {n} | nearest (self-search, 1 run) | {r['seconds']:.3f} | {r['seconds']:.3f} | "
                      f"{r['cpu_seconds']:.2f} | "
                      f"{n / r['seconds']:,.0f} | {r['peak_mib']:.0f} | n/a: plain needs {need:.0f} GiB | "
                      f"{head} ({identical}/{q} first rows identical) |", flush=True)
    if not ok:
        print("NEIGHBOURS DIFFER", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
