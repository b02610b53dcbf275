"""facediff-report DIR [DIR ...]: one table from Hydra multirun folders (see facediff.evaluation.study)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facediff.evaluation.study import report
from facediff.evaluation.tables import log_study_to_wandb


def run(argv: list[str] | None = None) -> dict:
    """facediff-report's work; returns the report (`facediff.evaluation.study.report`)."""
    parser = argparse.ArgumentParser(
        prog="facediff-report",
        description="A row per setting (the job's overrides without seed=), mean ± std and "
        "95%% intervals over seeds of the evaluation protocol's columns, paired differences "
        "to a baseline, the study's claims with computed verdicts, figures, failed jobs.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun folders (hydra.sweep.dir)")
    parser.add_argument(
        "--out", type=Path, help="where report.md and report.csv go (default: the first DIR)"
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log the table to W&B (offline unless --online)"
    )
    parser.add_argument("--online", action="store_true", help="with --wandb: log online")
    parser.add_argument(
        "--baseline",
        help="overrides naming the baseline rows (e.g. 'experiment=attr'): every other row's "
        "difference to the row that differs from it only there, paired by seed, with its 95%% "
        "interval and the smallest difference the seeds could detect",
    )
    args = parser.parse_args(argv)
    try:
        result = report(args.dirs, args.out or args.dirs[0], args.baseline)
    except (FileNotFoundError, ValueError) as e:
        print(f"facediff-report: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["markdown"])
    print("\nwrote " + " and ".join(result["paths"]))
    if args.wandb:
        print(f"W&B table: {log_study_to_wandb(result, offline=not args.online)}")
    return result


def main(argv: list[str] | None = None) -> None:
    """The console script: exit status 0 on success (a returned dict would make the script's
    `sys.exit(main())` print it and exit 1), 2 on a bad folder."""
    run(argv)


if __name__ == "__main__":
    main()
