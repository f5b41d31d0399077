"""A multi-seed ablation table from one evaluator run: mean, spread and range over seeds.

``python -m benchmarks.ablation RESULTS_JSON [RESULTS_JSON ...] [--seed-pattern REGEX]``

Each RESULTS_JSON is the ``results.json`` of a ``python -m resadapt.eval`` run whose ``--policies``
list seeds of configurations (``learned:runs/abl/capo_att0_s0/best``, ``..._s1/best``,
...). A policy's configuration is its label with the seed removed (``--seed-pattern``, default
``_s<digits>``); rows of one configuration at one budget are summarised over its seeds: accuracy,
retention and the within-video scale spread (the evaluator's ``mean_scale_spread``), each as mean
± population std, with min–max of accuracy. The rows of all files are pooled, so the evaluator
runs must share their data, frames and backbone (refused otherwise).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SEED_PATTERN = r"_s\d+"
"""What marks the seed in a run's folder name (``runs/abl/capo_att0_s2/best``)."""
COLUMNS = ("accuracy", "mean_retention", "mean_scale_spread")


def summarise(rows: list[dict], seed_pattern: str = SEED_PATTERN) -> list[dict]:
    """Group rows by (configuration, budget) and summarise each column over the seeds.

    rows: the evaluator's ``rows``; → one dict per group, in first-seen order, with ``config``,
    ``budget``, ``seeds`` and ``<column>_mean`` / ``_std`` / ``_min`` / ``_max``.
    """
    pattern = re.compile(seed_pattern)
    groups: dict[tuple[str, object], list[dict]] = defaultdict(list)
    for row in rows:
        key = (pattern.sub("", row["policy"], count=1), row["budget"])
        groups[key].append(row)
    out = []
    for (config, budget), members in groups.items():
        summary = {"config": config, "budget": budget, "seeds": len(members)}
        for column in COLUMNS:
            values = [float(r[column]) for r in members]
            summary[f"{column}_mean"] = statistics.fmean(values)
            summary[f"{column}_std"] = statistics.pstdev(values)
            summary[f"{column}_min"], summary[f"{column}_max"] = min(values), max(values)
        out.append(summary)
    return out


def table(summaries: list[dict]) -> str:
    """A markdown table: accuracy mean ± std (min–max), retention and spread mean ± std."""
    lines = [
        "| configuration | budget | seeds | accuracy | range | retention | spread |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        budget = "none" if s["budget"] is None else f"{100 * s['budget']:g} %"
        lines.append(
            f"| {s['config']} | {budget} | {s['seeds']} "
            f"| {100 * s['accuracy_mean']:.1f} ± {100 * s['accuracy_std']:.1f} % "
            f"| {100 * s['accuracy_min']:.1f}–{100 * s['accuracy_max']:.1f} % "
            f"| {100 * s['mean_retention_mean']:.1f} ± {100 * s['mean_retention_std']:.1f} % "
            f"| {s['mean_scale_spread_mean']:.3f} ± {s['mean_scale_spread_std']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="evaluator runs' results.json")
    parser.add_argument("--seed-pattern", default=SEED_PATTERN, help="regex of the seed in a label")
    args = parser.parse_args(argv)
    rows, setups = [], set()
    for path in args.results:
        try:
            result = json.loads(path.read_text())
            rows += result["rows"]
            config = result["config"]
            setups.add((config["data"], tuple(config["frames"]), str(result["backbone"])))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: cannot read the evaluator's rows from {path}: {e}", file=sys.stderr)
            return 2
    if len(setups) > 1:
        print("error: the evaluator runs differ in data, frames or backbone", file=sys.stderr)
        return 2
    try:
        re.compile(args.seed_pattern)
    except re.error as e:
        print(f"error: --seed-pattern is not a regular expression: {e}", file=sys.stderr)
        return 2
    print(table(summarise(rows, args.seed_pattern)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
