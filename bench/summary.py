"""Prints the summary table of a pytest-benchmark JSON file written by the bench/ suites.

For each (op, direction, device, dtype): median time per call, GB/s (bytes read + written) or,
for compute-bound ops, GFLOP/s, the fraction of the copy bandwidth measured in the same run, and the speed-up of fastnets over
each reference (reference time / fastnets time, > 1 means fastnets is faster).

    python bench/summary.py bench-results/bench.json
"""
import json
import sys
from collections import defaultdict


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = []
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        seconds = bench["stats"]["median"] / info["calls_per_round"]
        rows.append(dict(info, seconds=seconds, gbps=info["bytes"] / seconds / 1e9,
                         gflops=info["flops"] / seconds / 1e9 if info.get("flops") else None))
    return rows


def table(rows):
    # Each suite measures its own copy ceiling, at its own size.
    copy = {(r["suite"], r["device"], r["dtype"]): r["gbps"] for r in rows if r["impl"] == "copy"}
    groups = defaultdict(dict)
    for r in rows:
        if r["impl"] != "copy":
            groups[(r["suite"], r["op"], r["direction"], r["device"], r["dtype"])][r["impl"]] = r
    lines = ["| op | direction | device | dtype | impl | median ms | GB/s or GFLOP/s | % of copy | fastnets speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (suite, op, direction, device, dtype), impls in sorted(groups.items()):
        ours = impls.get("fastnets")
        for name, r in sorted(impls.items(), key=lambda item: item[0] != "fastnets"):
            ceiling = copy.get((suite, device, dtype))
            share = f"{100 * r['gbps'] / ceiling:.0f}%" if ceiling and not r["gflops"] else "-"
            rate = f"{r['gflops']:.0f} GFLOP/s" if r["gflops"] else f"{r['gbps']:.1f}"
            speedup = f"{r['seconds'] / ours['seconds']:.2f}x" if ours and name != "fastnets" else ""
            where = r["device_name"] if device == "cuda" else "cpu"
            lines.append(f"| {op} | {direction} | {where} | {dtype} | {name} | {1e3 * r['seconds']:.3f} | "
                         f"{rate} | {share} | {speedup} |")
    for (suite, device, dtype), gbps in sorted(copy.items()):
        lines.append(f"copy bandwidth, {suite}, {device} {dtype}: {gbps:.1f} GB/s (read + write)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(load(sys.argv[1])))
