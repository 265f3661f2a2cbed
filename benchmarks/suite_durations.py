"""The test suite's durations, per test and per file, from a pytest ``--durations=0`` log (the
Makefile's test target records one in every `make test`, CI's included).

    .venv/bin/python benchmarks/suite_durations.py LOG --label after --note "quiet 2-core machine"

adds (or replaces) LOG's entry under LABEL in benchmarks/results/suite_durations.json. Each
test's seconds are its setup + call + teardown as pytest reports them (phases under
``--durations-min``, 5 ms by default, are not listed and count as 0).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

OUT = Path(__file__).parent / "results" / "suite_durations.json"
LINE = re.compile(r"^(\d+(?:\.\d+)?)s (setup|call|teardown)\s+(\S.*)$")
SUMMARY = re.compile(r"^(?:=+ )?(.*) in (\d+(?:\.\d+)?)s")


def parse(text: str) -> dict[str, object]:
    tests: dict[str, float] = defaultdict(float)
    phases: dict[str, float] = defaultdict(float)
    summary, wall = None, None
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            seconds, phase, test = float(m[1]), m[2], m[3].strip()
            tests[test] += seconds
            phases[phase] += seconds
            continue
        s = SUMMARY.match(line.strip())
        if s and ("passed" in s[1] or "failed" in s[1]):
            summary, wall = s[1], float(s[2])
    if not tests:
        raise SystemExit("no durations in the log: was pytest run with --durations=0?")
    files: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for test, seconds in tests.items():
        files[test.split("::")[0]] += seconds
        counts[test.split("::")[0]] += 1
    by_file = {
        f: {"seconds": round(s, 2), "tests": counts[f]}
        for f, s in sorted(files.items(), key=lambda kv: -kv[1])
    }
    return {
        "wall_s": wall,
        "summary": summary,
        "listed_s": round(sum(tests.values()), 2),
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "files": by_file,
        "tests": {t: round(s, 2) for t, s in sorted(tests.items(), key=lambda kv: -kv[1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--label", required=True, help="e.g. before, after")
    parser.add_argument("--note", required=True, help="the machine, and what else ran on it")
    parser.add_argument("--commit", default="", help="the commit the suite ran at")
    args = parser.parse_args()
    entry = parse(args.log.read_text(errors="replace"))
    doc = json.loads(OUT.read_text()) if OUT.exists() else {}
    doc[args.label] = {
        "note": args.note,
        "commit": args.commit,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        **entry,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    files = entry["files"]
    assert isinstance(files, dict)
    print(f"{args.label}: {entry['summary']} in {entry['wall_s']} s; slowest files:")
    for f, d in list(files.items())[:10]:
        print(f"  {d['seconds']:8.1f} s  {d['tests']:3d} tests  {f}")


if __name__ == "__main__":
    main()
