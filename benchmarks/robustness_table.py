#!/usr/bin/env python3
"""Summarise robustness runs: final accuracy (mean +- sd over seeds) per
fleet size, aggregation rule and attack, as a markdown table and an SVG
bar chart. Each input is one simulator run's rounds.json.

    python3 benchmarks/robustness_table.py runs/*/*/*/*/rounds.json \\
        --markdown RESULTS.md --svg accuracy.svg

Standard library only.
"""

import argparse
import json
import statistics
from collections import defaultdict
from html import escape

ATTACKS = ["none", "huge:1000000", "sign_flip:4.5", "sign_flip:50", "inflate:4.5:1000000", "drift:0.5"]
RULES = ["fedavg", "cosine:0", "trimmed_mean:0.25", "median", "krum:0"]
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00"]


def load(paths):
    runs = defaultdict(list)  # (clients, rule, attack) -> [accuracy]
    suspected = defaultdict(list)
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        attack = r.get("attack") or "none"
        key = ((r["clients"], r["codec"]), r["rule"], attack)
        if r.get("final_accuracy") is not None:
            runs[key].append(100.0 * r["final_accuracy"])
        suspected[key].append(r.get("suspected", 0))
    return runs, suspected


def cell(values):
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def markdown(runs, suspected):
    out = []
    for clients in sorted({k[0] for k in runs}):
        vehicles, codec = clients
        attackers = {4: 1, 20: 4}.get(vehicles, "?")
        seeds = max(len(v) for k, v in runs.items() if k[0] == clients)
        out.append(f"### {vehicles} vehicles, {attackers} dishonest, `{codec}` updates ({seeds} seeds)\n")
        out.append("Final test accuracy, % (mean ± sd over seeds); in brackets, updates flagged as suspected per run.\n")
        out.append("| attack | " + " | ".join(RULES) + " |")
        out.append("|---|" + "---:|" * len(RULES))
        for attack in ATTACKS:
            row = []
            for rule in RULES:
                key = (clients, rule, attack)
                flags = suspected.get(key)
                flag = f" ({statistics.fmean(flags):.0f})" if flags else ""
                row.append(cell(runs.get(key, [])) + flag)
            out.append(f"| {attack} | " + " | ".join(row) + " |")
        # worst drop against the clean run of the same rule, and clean vs fedavg
        worst = []
        for rule in RULES:
            clean = runs.get((clients, rule, "none"))
            drops = [
                statistics.fmean(clean) - statistics.fmean(runs[(clients, rule, a)])
                for a in ATTACKS[1:]
                if clean and runs.get((clients, rule, a))
            ]
            worst.append(f"{max(drops):.1f}" if drops else "-")
        out.append("| **worst drop vs its clean run** | " + " | ".join(worst) + " |")
        fedavg_clean = runs.get((clients, "fedavg", "none"))
        loss = []
        for rule in RULES:
            clean = runs.get((clients, rule, "none"))
            loss.append(
                f"{statistics.fmean(fedavg_clean) - statistics.fmean(clean):+.1f}"
                if clean and fedavg_clean
                else "-"
            )
        out.append("| **clean: fedavg minus this rule** | " + " | ".join(loss) + " |")
        out.append("")
    return "\n".join(out)


def svg(runs):
    sizes = sorted({k[0] for k in runs})
    bar, gap, group_gap = 9, 2, 14
    group = len(RULES) * (bar + gap) + group_gap
    panel_w = 60 + group * len(ATTACKS)
    h_plot, top = 220, 40
    width = panel_w * len(sizes) + 20
    height = top + h_plot + 90
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for p, clients in enumerate(sizes):
        x0 = 20 + p * panel_w + 40
        parts.append(f'<text x="{x0}" y="20" font-size="13">{clients[0]} vehicles, {escape(clients[1])}: final accuracy (%)</text>')
        for tick in range(0, 101, 20):
            y = top + h_plot - tick / 100 * h_plot
            parts.append(f'<line x1="{x0}" x2="{x0 + group * len(ATTACKS)}" y1="{y}" y2="{y}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{tick}</text>')
        for a, attack in enumerate(ATTACKS):
            gx = x0 + a * group + 4
            for r, rule in enumerate(RULES):
                vals = runs.get((clients, rule, attack))
                if not vals:
                    continue
                v = statistics.fmean(vals)
                hgt = max(v, 0) / 100 * h_plot
                x = gx + r * (bar + gap)
                parts.append(
                    f'<rect x="{x}" y="{top + h_plot - hgt:.1f}" width="{bar}" height="{hgt:.1f}" fill="{COLOURS[r]}"><title>{escape(rule)} / {escape(attack)}: {v:.1f}%</title></rect>'
                )
            label = attack.replace(":1000000", "")
            parts.append(f'<text x="{gx + group / 2 - 8}" y="{top + h_plot + 14}" text-anchor="middle">{escape(label)}</text>')
    for r, rule in enumerate(RULES):
        x = 60 + r * 150
        parts.append(f'<rect x="{x}" y="{height - 30}" width="10" height="10" fill="{COLOURS[r]}"/>')
        parts.append(f'<text x="{x + 14}" y="{height - 21}">{escape(rule)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--svg", required=True)
    args = ap.parse_args()
    runs, suspected = load(args.runs)
    with open(args.markdown, "w") as f:
        f.write("# Robustness: dishonest vehicles against each aggregation rule\n\n")
        f.write(
            "Made by `bash benchmarks/robustness.sh` (the commands and settings are at its top): "
            "the bundled digits, MLP 64-128-10, IID split, 15 rounds, every vehicle in every round; "
            "the dishonest vehicles attack in every round, correctly signed. "
            "`huge`: every value about 1e6; `sign_flip:S`: the honest update negated at S times its norm "
            "(the norm bound is 5x the median); `inflate`: sign_flip:4.5 claiming 1,000,000 rows; "
            "`drift:0.5`: the honest update plus the same fixed direction every round at half its norm. "
            "A byte-for-byte copy of another vehicle's update is refused outright, so it has no row. "
            "`krum:0` assumes a quarter of the round dishonest. "
            "The default rule is `cosine:0`.\n\n"
        )
        f.write(markdown(runs, suspected))
        f.write("\n![final accuracy per attack and rule](accuracy.svg)\n")
    with open(args.svg, "w") as f:
        f.write(svg(runs))


if __name__ == "__main__":
    main()
