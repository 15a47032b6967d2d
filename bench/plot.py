#!/usr/bin/env python3
"""plot.py: ms against tokens from the JSON lines of `moejit bench --json`, log-log.

One line per model (its expert count E; a row run with --graph-tokens N or --eager gets a line of
its own), its floor (floor_ms) dashed in the same colour. The files may hold the rows of several
commits: by default only those of the commit of the last row read are drawn (a landing appends its
rows after the older ones); --commit picks another, `--commit all` draws each commit as its own
line. Of two rows with the same line and token count the later one is drawn.

    python3 bench/plot.py bench/results/DATE-DEVICE-decode.jsonl bench/results/DATE-DEVICE-prefill.jsonl \\
        --out bench/results/DATE-DEVICE-bench.png [--title TEXT] [--commit COMMIT|all]

Needs matplotlib (`pip install matplotlib`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Tuple


def read_rows(paths: List[str]) -> List[Dict[str, Any]]:
    rows = []
    for path in paths:
        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            sys.exit(f"plot.py: {path}: {e.strerror}")
        with f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"plot.py: {path}:{n}: not JSON: {e}")
                if not isinstance(r.get("tokens"), int) or not isinstance(r.get("ms"), (int, float)):
                    sys.exit(f"plot.py: {path}:{n}: no tokens or ms: not a `moejit bench --json` row")
                rows.append(r)
    return rows


def line_key(r: Dict[str, Any], by_commit: bool) -> Tuple[Any, ...]:
    return (r.get("experts"), r.get("graph_tokens") or 0, r.get("mode", "graph"),
            r.get("commit", "") if by_commit else "")


def label(key: Tuple[Any, ...]) -> str:
    experts, graph_tokens, mode, commit = key
    text = f"E={experts}"
    if graph_tokens:
        text += f", graph of {graph_tokens} tokens"
    if mode != "graph":
        text += f", {mode}"
    if commit:
        text += f" ({commit})"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description="ms against tokens from `moejit bench --json` rows")
    ap.add_argument("files", nargs="+", help="JSON lines written by moejit bench --json")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--title", help="the plot's title (default: device, dtype, shape, commit)")
    ap.add_argument("--commit", help="the commit whose rows are drawn (default: that of the last "
                    "row read; all: every commit, a line each)")
    args = ap.parse_args()

    rows = read_rows(args.files)
    if not rows:
        sys.exit("plot.py: no rows")
    commit = args.commit or rows[-1].get("commit", "")
    by_commit = commit == "all"
    if not by_commit:
        left = {r.get("commit") for r in rows if r.get("commit") != commit}
        rows = [r for r in rows if r.get("commit") == commit]
        if not rows:
            sys.exit(f"plot.py: no rows of commit {commit}")
        if left:
            print(f"plot.py: drawing the rows of {commit}; left out those of {', '.join(sorted(left))}",
                  file=sys.stderr)

    lines: Dict[Tuple[Any, ...], Dict[int, Dict[str, Any]]] = {}
    for r in rows:
        lines.setdefault(line_key(r, by_commit), {})[r["tokens"]] = r

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py: matplotlib is not installed (pip install matplotlib)")

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, key in enumerate(sorted(lines, key=lambda k: (k[0] if isinstance(k[0], int) else -1, k[1],
                                                             str(k[2]), str(k[3])))):
        pts = [lines[key][t] for t in sorted(lines[key])]
        color = f"C{i}"
        ax.plot([p["tokens"] for p in pts], [p["ms"] for p in pts], marker="o", color=color,
                label=label(key))
        floor = [p for p in pts if isinstance(p.get("floor_ms"), (int, float))]
        if floor:
            ax.plot([p["tokens"] for p in floor], [p["floor_ms"] for p in floor], linestyle="--",
                    color=color, alpha=0.8, label=f"{label(key)} floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("ms (median of the replays)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    first = rows[0]
    title = args.title or (f"moejit bench, {first.get('device', '')}: {first.get('dtype', '')} "
                           f"H={first.get('hidden')} I={first.get('intermediate')} "
                           f"top-{first.get('top_k')}" + ("" if by_commit else f", {commit}"))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"plot.py: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
