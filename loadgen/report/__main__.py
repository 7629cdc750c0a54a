"""`python -m loadgen.report RUN_DIR` / `python -m loadgen.report --baseline BASELINE CANDIDATE` (what the fab tasks call).

Exit codes: report PASS 0, FAIL 99, PARTIAL 1; comparison: 99 when a figure regressed, else 0; 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys

from loadgen.errors import EXIT_CRITERIA, EXIT_OK, LoadgenError, UsageError
from loadgen.results.verdict import EXIT_CODES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadgen.report", description="Build a run's report, or compare two runs.")
    ap.add_argument("run_dir", nargs="+", help="RUN_DIR, or BASELINE CANDIDATE with --baseline")
    ap.add_argument("--baseline", action="store_true", help="compare: first dir is the baseline, second the candidate")
    ap.add_argument("--out", help="comparison page path (default: CANDIDATE/compare-<BASELINE>.html)")
    ap.add_argument("--tolerance", default="0.10", help="relative change that counts as a regression (0.10)")
    ap.add_argument("--confidence", default="0.999", help="rank-test confidence a change must reach to count (0.999)")
    args = ap.parse_args(argv)
    try:
        if args.baseline:
            if len(args.run_dir) != 2:
                raise UsageError("--baseline needs two run directories: BASELINE CANDIDATE")
            from loadgen.report import compare_runs, format_comparison

            res = compare_runs(args.run_dir[0], args.run_dir[1], args.out, args.tolerance, args.confidence)
            print(format_comparison(res))
            return EXIT_CRITERIA if res["regressions"] else EXIT_OK
        if len(args.run_dir) != 1:
            raise UsageError("give one run directory (or --baseline BASELINE CANDIDATE)")
        from loadgen.report import build_report, format_verdict

        s = build_report(args.run_dir[0])
        print(format_verdict(s))
        return EXIT_CODES[s["status"]]
    except LoadgenError as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
