"""Print a Markdown table of a pytest-benchmark JSON file with speed-ups over the baselines."""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["params"]["impl"]
        groups[b["group"]][impl] = b["stats"]["median"]
    print("| benchmark | implementation | median | speed-up of native |")
    print("|---|---|---|---|")
    for group, impls in groups.items():
        native = next(v for k, v in impls.items() if k.startswith("native"))
        for impl, median in sorted(impls.items(), key=lambda kv: kv[1]):
            ratio = "" if impl.startswith("native") else f"{median / native:.1f}x"
            print(f"| {group} | {impl} | {_fmt(median)} | {ratio} |")


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    return f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    main(sys.argv[1])
