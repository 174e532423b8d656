"""``cnnaudit`` on the command line (also ``python -m cnnaudit``).

    cnnaudit merge SHARD.json ... --report=PATH [--json=PATH] [--summary=PATH] [--shards=N]
    cnnaudit merge BASELINE.json ... --baseline=PATH
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnaudit", description="cnnaudit's command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser(
        "merge", help="one report (or baseline) from the JSON outputs of several shards",
        description="Merge the --cnnaudit-json outputs of the shards of one suite (a CI matrix, pytest-split) into "
                    "one report equal to a serial run's, and/or their --cnnaudit-save-baseline files into one baseline.",
    )
    merge.add_argument("shards", nargs="+", type=Path, metavar="SHARD.json",
                       help="each shard's --cnnaudit-json report (its images folder beside it) or saved baseline")
    merge.add_argument("--report", type=Path, help="write the merged HTML report here")
    merge.add_argument("--json", type=Path, help="write the merged JSON report here")
    merge.add_argument("--summary", type=Path, help="write the merged run's Markdown summary here")
    merge.add_argument("--baseline", type=Path, help="write the merged baseline here (from baseline shards)")
    merge.add_argument("--shards", dest="expected", type=int, metavar="N",
                       help="the number of shards the suite was split into: fewer report files make the verdict incomplete")
    args = parser.parse_args(argv)
    from cnnaudit.report.merge import MergeError, merge_baselines, merge_reports

    reports, baselines = [], []
    try:
        for path in args.shards:
            (baselines if _format(path) == "cnnaudit-baseline" else reports).append(path)
        if baselines and args.baseline is None:
            raise MergeError(f"{baselines[0]} is a baseline: give --baseline=PATH to merge the baselines into")
        if reports and args.report is None and args.json is None:
            raise MergeError("give --report=PATH and/or --json=PATH to merge the reports into")
        if reports:
            merged = merge_reports(reports, report=args.report, json_path=args.json, expected_shards=args.expected)
            if args.summary is not None:
                from cnnaudit.report import atomic_open
                from cnnaudit.report.overview import markdown

                with atomic_open(args.summary) as handle:
                    handle.write(markdown(merged, args.report, args.summary.parent))
            counts = ", ".join(f"{n} {outcome}" for outcome, n in merged["counts"].items() if n)
            print(f"cnnaudit merge: {len(reports)} shards, {len(merged['tests'])} tests ({counts}): {merged['verdict']}")
            for problem in merged["merge_problems"]:
                print(f"cnnaudit merge: incomplete: {problem}")
        if baselines:
            stored = merge_baselines(baselines, args.baseline)
            print(f"cnnaudit merge: baseline {args.baseline} ({stored} Scores from {len(baselines)} shards)")
    except MergeError as error:
        print(f"cnnaudit merge: error: {error}", file=sys.stderr)
        return 2
    return 0 if not reports or merged["verdict"] == "pass" else 1


def _format(path: Path) -> str | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("format")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None  # merge_reports says what is wrong with it


if __name__ == "__main__":
    sys.exit(main())
