"""Print one markdown row per fold-0 training in the given run folders (scripts/recipe_grid.sh).

    python scripts/recipe_summary.py RUNS_DIR   # reads RUNS_DIR/*/folds/fold0/<method>/metrics.json and RUNS_DIR/wall.txt
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LIGHTS = ("fluorescent", "color1", "color2", "color3")  # column order of the table


def main(runs: Path) -> None:
    walls = {}
    if (runs / "wall.txt").exists():
        for line in (runs / "wall.txt").read_text().splitlines():
            parts = line.split()
            walls[parts[0]] = (parts[2].removeprefix("wall="), " ".join(parts[3:]))
    print("| run | method | acc | wF1 | one light missing (fl/c1/c2/c3) | worst | head k alone | wall | flags |")
    print("|---|---|---|---|---|---|---|---|---|")
    for metrics_path in sorted(runs.glob("*/folds/fold0/*/metrics.json")):
        run = metrics_path.parents[3].name
        m = json.loads(metrics_path.read_text())
        missing = m.get("missing_light_accuracy") or {}
        miss = "/".join(f"{missing[k]:.2f}" for k in LIGHTS) if missing else "-"
        worst = f"{min(missing.values()):.2f}" if missing else "-"
        alone = m.get("head_independence") or {}
        heads = "/".join(f"{alone[k]['accuracy']:.2f}" for k in LIGHTS) if alone else "-"
        wall, flags = walls.get(run, ("?", ""))
        print(f"| {run} | {m.get('method')} | {m['accuracy']:.3f} | {m['weighted_f1']:.3f} | {miss} | {worst} | {heads} | {wall} | {flags} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
