"""``clipneg report``: tables (markdown, csv) and bar charts from result JSONs."""

from __future__ import annotations

import argparse

REPORT_EXAMPLES = """examples:
  clipneg report results/ --out report/
  clipneg report results/ --out report/ --baseline ViT-B-32-quickgelu__openai
writes report/summary.md, report/summary.csv (one row per model, the published column layouts), and
report/plots/<benchmark>.png (bars per model). With --baseline, deltas against that model's label.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = REPORT_EXAMPLES
    parser.add_argument("results", help="results folder written by `clipneg eval --out`")
    parser.add_argument("--out", default="report", help="report folder (default report/)")
    parser.add_argument("--baseline", default=None, help="model label to compute deltas against")
    parser.add_argument("--benchmarks", nargs="+", default=None, help="only these benchmarks")
    parser.add_argument("--no-plots", action="store_true", help="tables only")


def run(args: argparse.Namespace) -> int:
    from clipneg.eval.report import ReportConfig, build_report

    out = build_report(ReportConfig(results_dir=args.results, out_dir=args.out, baseline=args.baseline,
                                    benchmarks=tuple(args.benchmarks or ()), plots=not args.no_plots))
    for p in out:
        print(p)
    return 0


