#!/usr/bin/env python3
"""Summarise the strategies benchmark: per split and strategy, the final,
best and last-5-rounds mean accuracy (mean +- sd over seeds), rounds to
80 %, bytes, each seed's final accuracy, as a markdown table, and an SVG
of mean accuracy per round. Each input is one `simulate --seeds` run's
seeds.json.

    python3 benchmarks/strategies_table.py runs/*/*/seeds.json \\
        --markdown RESULTS.md --svg accuracy.svg

Standard library only.
"""

import argparse
import json
import statistics
from html import escape

ORDER = ["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold"]
COLOURS = ["#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
FLOWER = {0.1: (79.5, 0.8), 0.5: (83.1, 0.7)}


def spread(s, scale=100.0, digits=1):
    if not s:
        return "-"
    return f"{s['mean'] * scale:.{digits}f} ± {s['sd'] * scale:.{digits}f}"


def split_alpha(summary):
    """The Dirichlet alpha of Flower's split, else the partition's name."""
    part = summary["runs"][0]["partition"]
    for a in (0.1, 0.5):
        if f"dir{a}_" in part:
            return a
    return part.split(":", 1)[-1].split("shared/data/", 1)[-1].rstrip("/")


def title(alpha):
    if isinstance(alpha, float):
        return f"Dirichlet {alpha} (Flower's split)"
    if alpha.startswith(("condition:", "features:", "iid")):
        return f"digits split by `--csv-split {alpha}` (10 vehicles)"
    return f"CSV fleet `{alpha}` (one vehicle per file)"


def order_key(alpha):
    return (0, alpha, "") if isinstance(alpha, float) else (1, 0, alpha)


def size(b):
    return f"{b / 1e6:.0f} MB" if b >= 10e6 else f"{b / 1e3:.0f} kB"


def load(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            rows.append(json.load(f))
    key = lambda s: (order_key(split_alpha(s)), ORDER.index(s["label"]) if s["label"] in ORDER else 99)
    return sorted(rows, key=key)


def markdown(rows):
    out = []
    for alpha in sorted({split_alpha(r) for r in rows}, key=order_key):
        seeds = ", ".join(str(s) for s in rows[0]["seeds"])
        flower = FLOWER.get(alpha)
        metric = rows[0]["runs"][0].get("metric", "test")
        out.append(f"### {title(alpha)}, seeds {seeds}\n")
        if metric == "holdout":
            out.append("Scores are the vehicles' own held-out rows' score of each round's base model (no server test set).\n")
        if flower:
            out.append(f"Flower 1.41 FedAvg on the same splits: final accuracy {flower[0]} % ± {flower[1]}.\n")
        group = [r for r in rows if split_alpha(r) == alpha]
        if all(r["final_accuracy"] is None for r in group):
            out.append("| strategy | settings | final RMSE | RMSE per seed | uplink per run |")
            out.append("|---|---|---:|---|---:|")
            for r in group:
                rmse = [x["final_rmse"] for x in r["runs"] if x.get("final_rmse") is not None]
                mean = statistics.fmean(rmse) if rmse else float("nan")
                sd = statistics.stdev(rmse) if len(rmse) > 1 else 0.0
                per_seed = ", ".join(f"{v:.3f}" for v in rmse)
                out.append(
                    f"| {r['label']} | `{r['runs'][0]['strategy_detail']}` | {mean:.3f} ± {sd:.3f} | {per_seed} | "
                    f"{size(r['bytes_up']['mean'])} |"
                )
            out.append("")
            continue
        out.append("| strategy | settings | final acc (%) | best acc (%) | last 5 rounds (%) | rounds to 80 % | uplink per run | downlink per run | final per seed (%) |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in group:
            first = r["runs"][0]
            r80 = r["rounds_to_80"]
            reached = f"{r80['mean']:.1f} ± {r80['sd']:.1f}" if r80 else "never"
            if r80 and r["never_80"]:
                reached += f" ({r['never_80']} never)"
            per_seed = ", ".join(f"{x['final_accuracy'] * 100:.2f}" for x in r["runs"])
            out.append(
                f"| {r['label']} | `{first['strategy_detail']}` | {spread(r['final_accuracy'])} | "
                f"{spread(r['best_accuracy'])} | {spread(r['last5_accuracy'])} | {reached} | "
                f"{size(r['bytes_up']['mean'])} | {size(r['bytes_down']['mean'])} | {per_seed} |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def svg(rows):
    alphas = sorted({split_alpha(r) for r in rows}, key=order_key)
    w, h, pad = 420, 300, 45
    lo, hi = 0.5, 0.9
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(alphas)}" height="{h + 40}" font-family="sans-serif" font-size="11">']
    for k, alpha in enumerate(alphas):
        x0 = k * w
        parts.append(f'<text x="{x0 + w / 2}" y="14" text-anchor="middle">{escape(title(alpha))}: mean accuracy per round</text>')
        parts.append(f'<rect x="{x0 + pad}" y="20" width="{w - 2 * pad}" height="{h - 40}" fill="none" stroke="#888"/>')
        for tick in (0.5, 0.6, 0.7, 0.8, 0.9):
            y = 20 + (h - 40) * (hi - tick) / (hi - lo)
            parts.append(f'<text x="{x0 + pad - 4}" y="{y + 4}" text-anchor="end">{int(tick * 100)}</text>')
            parts.append(f'<line x1="{x0 + pad}" x2="{x0 + w - pad}" y1="{y}" y2="{y}" stroke="#eee"/>')
        legend = 0
        for r in rows:
            if split_alpha(r) != alpha:
                continue
            i = ORDER.index(r["label"]) if r["label"] in ORDER else len(ORDER) - 1
            series = [x["rounds"] for x in r["runs"]]
            n = min(len(s) for s in series)
            pts = []
            for j in range(n):
                accs = [s[j]["accuracy"] for s in series if s[j]["accuracy"] is not None]
                if not accs:
                    continue
                a = min(max(statistics.fmean(accs), lo), hi)
                x = x0 + pad + (w - 2 * pad) * j / max(n - 1, 1)
                y = 20 + (h - 40) * (hi - a) / (hi - lo)
                pts.append(f"{x:.1f},{y:.1f}")
            colour = COLOURS[i % len(COLOURS)]
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(pts)}"/>')
            parts.append(f'<text x="{x0 + pad + 8}" y="{h - 30 - 13 * legend}" fill="{colour}">{escape(r["label"])}</text>')
            legend += 1
        parts.append(f'<text x="{x0 + w / 2}" y="{h - 5}" text-anchor="middle">round</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--markdown")
    ap.add_argument("--svg")
    args = ap.parse_args()
    rows = load(args.paths)
    text = markdown(rows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    else:
        print(text)
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg(rows))


if __name__ == "__main__":
    main()
