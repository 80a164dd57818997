#!/usr/bin/env python3
"""Tables and a plot of benchmarks/asynchronous.sh: per seed, each mode's
final accuracy, simulated hours and bytes, and the simulated time the
asynchronous run first reaches the synchronous run's final accuracy minus
one point (the goal: at most half the synchronous run's time)."""

import argparse
import json
import statistics
from pathlib import Path


def load(run: Path):
    rounds = json.loads((run / "rounds.json").read_text())["rounds"]
    return [r for r in rounds if r.get("sim_seconds") is not None]


def first_at(rounds, target):
    for r in rounds:
        if r["accuracy"] is not None and r["accuracy"] >= target:
            return r
    return None


def moving(rounds, n=5):
    """Each round with the mean accuracy of it and the n - 1 before it."""
    out = []
    for i, r in enumerate(rounds):
        window = [x["accuracy"] for x in rounds[max(0, i - n + 1) : i + 1] if x["accuracy"] is not None]
        if len(window) == n:
            out.append(dict(r, accuracy=sum(window) / n))
    return out


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--markdown", type=Path, required=True)
    ap.add_argument("--svg", type=Path)
    a = ap.parse_args()
    seeds = sorted(
        int(p.name.split("-")[1]) for p in (a.runs / "sync").glob("seed-*")
    )
    lines, curves = [], {}
    for run in sorted(a.runs.glob("async-k*"), key=lambda p: int(p.name[7:])):
        table, curves[run.name] = section(a.runs, run, seeds)
        lines += table
    a.markdown.write_text("\n".join(lines))
    print("\n".join(lines))
    if a.svg:
        a.svg.write_text(svg(a.runs, seeds, sorted(curves)))


def section(runs, run, seeds):
    k = run.name[7:]
    lines = [
        f"### Asynchronous (FedBuff, a model every {k} updates) against synchronous rounds",
        "",
        "Fashion-MNIST, Flower's Dirichlet 0.5 splits, 20 vehicles each online "
        "with probability 0.3 per 10-minute slot, device speeds spread 10x, "
        "simulated clock (`bash benchmarks/asynchronous.sh`). Target: the "
        "synchronous run's final accuracy minus 1 point.",
        "",
        "| seed | sync final (%) | sync last 5 (%) | sync hours | sync MB up / down | async final (%) | async last 5 (%) | async hours | async MB up / down | async first reaches target (h, share of sync) | async 5-round mean reaches it (h, share) | async MB up to that |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shares, steady_shares, sync_finals, async_finals = [], [], [], []
    sync_last5, async_last5 = [], []
    for seed in seeds:
        s = load(runs / "sync" / f"seed-{seed}")
        y = load(run / f"seed-{seed}")
        s_final, y_final = s[-1]["accuracy"], y[-1]["accuracy"]
        s_hours, y_hours = s[-1]["sim_seconds"] / 3600, y[-1]["sim_seconds"] / 3600
        target = s_final - 0.01
        hit = first_at(y, target)
        steady = first_at(moving(y), target)
        total = s[-1]["sim_seconds"]
        share = hit["sim_seconds"] / total if hit else None
        steady_share = steady["sim_seconds"] / total if steady else None
        up_to = (
            sum(r["bytes_up"] for r in y if r["round"] <= steady["round"]) / 1e6
            if steady
            else None
        )
        last5 = lambda rs: sum(r["accuracy"] or 0 for r in rs[-5:]) / min(5, len(rs)) * 100
        shares.append(share)
        steady_shares.append(steady_share)
        sync_finals.append(s_final * 100)
        async_finals.append(y_final * 100)
        sync_last5.append(last5(s))
        async_last5.append(last5(y))
        mb = lambda rs, k: sum(r[k] for r in rs) / 1e6
        at = lambda r, sh: f"{r['sim_seconds'] / 3600:.2f} h, {sh:.2f}" if r else "never"
        lines.append(
            f"| {seed} | {s_final * 100:.2f} | {last5(s):.2f} | {s_hours:.2f} | "
            f"{mb(s, 'bytes_up'):.0f} / {mb(s, 'bytes_down'):.0f} | "
            f"{y_final * 100:.2f} | {last5(y):.2f} | {y_hours:.2f} | "
            f"{mb(y, 'bytes_up'):.0f} / {mb(y, 'bytes_down'):.0f} | "
            f"{at(hit, share)} | {at(steady, steady_share)} | "
            + (f"{up_to:.0f} |" if up_to is not None else "- |")
        )
    lines += [
        "",
        f"Mean over seeds: synchronous final {spread(sync_finals)} % (last 5 "
        f"rounds {spread(sync_last5)} %), asynchronous final "
        f"{spread(async_finals)} % (last 5 {spread(async_last5)} %). The "
        f"asynchronous run first reaches the target in {spread(shares)} of "
        f"the synchronous run's simulated time, and its 5-round mean in "
        f"{spread(steady_shares)}"
        + ("" if all(s is not None for s in steady_shares) else " (a seed never did)")
        + ".",
        "",
    ]
    return lines, True


def svg(runs, seeds, names):
    """Accuracy against simulated hours: every seed's synchronous run and
    each buffer's asynchronous run."""
    w, h, pad = 720, 360, 50
    curves = {"sync": [load(runs / "sync" / f"seed-{s}") for s in seeds]}
    for name in names:
        curves[name] = [load(runs / name / f"seed-{s}") for s in seeds]
    hours = max(rs[-1]["sim_seconds"] for group in curves.values() for rs in group) / 3600
    x = lambda secs: pad + (w - 2 * pad) * secs / 3600 / max(hours, 1e-9)
    y = lambda acc: h - pad - (h - 2 * pad) * (acc - 0.5) / 0.4
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(curves)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">simulated hours (0 to {hours:.2f})</text>',
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">test accuracy (50 to 90 %)</text>',
    ]
    for acc in (0.6, 0.7, 0.8, 0.9):
        parts.append(f'<text x="{pad - 6}" y="{y(acc) + 4}" text-anchor="end">{acc * 100:.0f}</text>')
    for name, group in curves.items():
        for rounds in group:
            pts = " ".join(
                f"{x(r['sim_seconds']):.1f},{y(max(r['accuracy'], 0.5)):.1f}"
                for r in rounds
                if r["accuracy"] is not None
            )
            parts.append(f'<polyline fill="none" stroke="{colours[name]}" stroke-opacity="0.7" points="{pts}"/>')
    for i, name in enumerate(curves):
        label = "synchronous" if name == "sync" else f"asynchronous, a model every {name[7:]} updates"
        parts.append(f'<text x="{w - pad - 260}" y="{pad + 14 + 16 * i}" fill="{colours[name]}">{label} (each seed)</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
