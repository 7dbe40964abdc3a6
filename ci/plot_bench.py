#!/usr/bin/env python3
"""Draws docs/bench.svg from `shmproc bench --json` output (stdin), standard library only.

    cargo run --release -- bench --json | python3 ci/plot_bench.py > docs/bench.svg

Three panels on log scales: the 8-byte round trip (lower is better), the 8-byte message stream
and the 64 KiB byte stream (higher is better). shmproc's transports are drawn in blue, the
baselines in grey.
"""
import json
import math
import sys

PANELS = [
    ("pingpong-8B", "rtt_ns", "8-byte round trip, ns (log; shorter is better)"),
    ("stream-8B", "msgs_per_s", "8-byte stream, messages/s (log; longer is better)"),
    ("stream-64KiB", "bytes_per_s", "64 KiB stream, bytes/s (log; longer is better)"),
]
BASELINES = {"raw-spin", "raw-futex", "raw-ring", "os-pipe", "unix-socket", "python-mp", "raw-fork", "raw-exec"}


def human(v, metric):
    if metric == "rtt_ns":
        for unit, div in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
            if v >= div:
                return f"{v / div:.3g} {unit}"
        return f"{v:.3g} ns"
    unit = "B/s" if metric == "bytes_per_s" else "msg/s"
    for prefix, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def main():
    rows = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
    width, bar_left, bar_width, row_h = 760, 150, 480, 20
    parts, y = [], 10
    for scenario, metric, title in PANELS:
        sel = [r for r in rows if r["scenario"] == scenario and r["metric"] == metric and r["median"]]
        if not sel:
            continue
        lo = min(r["median"] for r in sel)
        hi = max(r["median"] for r in sel)
        lmin, lmax = math.log10(lo) - 0.3, math.log10(hi) + 0.05
        parts.append(f'<text x="10" y="{y + 14}" font-weight="bold">{title}</text>')
        y += 24
        for r in sel:
            frac = (math.log10(r["median"]) - lmin) / (lmax - lmin)
            w = max(2, int(frac * bar_width))
            colour = "#9aa0a6" if r["transport"] in BASELINES else "#1a73e8"
            parts.append(f'<text x="{bar_left - 6}" y="{y + 14}" text-anchor="end">{r["transport"]}</text>')
            parts.append(f'<rect x="{bar_left}" y="{y + 3}" width="{w}" height="{row_h - 6}" fill="{colour}"/>')
            parts.append(f'<text x="{bar_left + w + 6}" y="{y + 14}">{human(r["median"], metric)}</text>')
            y += row_h
        y += 14
    print(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
          f'font-family="sans-serif" font-size="12">')
    print(f'<rect width="{width}" height="{y}" fill="white"/>')
    print("\n".join(parts))
    print("</svg>")


if __name__ == "__main__":
    main()
