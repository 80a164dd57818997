#!/usr/bin/env python3
"""Summarise simulator runs: a markdown table and accuracy-vs-bytes SVG plots.

Each input is one run's JSON (label, alpha, codec, downlink_codec, rounds[]),
as written by the simulator. Runs are grouped by alpha; within an alpha,
compression ratios are taken against the run whose codec is exactly "fp32".

    python3 benchmarks/plot.py runs/*.json \\
        --markdown results.md --svg-prefix plots/accuracy_vs_bytes

Standard library only, so it runs on any machine with Python 3.11.
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

# Okabe-Ito colours (colour-blind safe), then a few Tableau ones.
PALETTE = [
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#8C564B",
    "#F0C419",
    "#7F3C8D",
    "#17BECF",
]
BASELINE_COLOUR = "#333333"
BASELINE_CODEC = "fp32"
MARKERS = ["circle", "square", "triangle", "diamond"]
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


@dataclass
class Run:
    """One simulator run, with the totals the table needs."""

    path: str
    label: str
    alpha: float | None
    codec: str
    downlink_codec: str | None
    rounds: list[dict]
    server_lr: float = 1.0

    @property
    def is_baseline(self) -> bool:
        """Plain FedAvg: dense fp32 both ways, server learning rate 1."""
        return (
            self.codec == BASELINE_CODEC
            and self.downlink_codec in (None, BASELINE_CODEC)
            and self.server_lr == 1.0
        )

    def series(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.rounds if r.get(key) is not None]

    def total(self, key: str) -> float:
        return sum(self.series(key))

    @property
    def accuracies(self) -> list[float]:
        return self.series("accuracy")

    @property
    def round_count(self) -> int:
        return len(self.rounds)

    def per_round(self, *keys: str) -> float:
        """Mean bytes per round over `keys`, so runs of unequal length compare fairly."""
        return sum(self.total(k) for k in keys) / max(self.round_count, 1)

    def rounds_to(self, target: float) -> int | None:
        for i, r in enumerate(self.rounds):
            acc = r.get("accuracy")
            if acc is not None and acc >= target:
                return int(r.get("round", i + 1))
        return None

    def cumulative_points(self) -> list[tuple[float, float]]:
        """(cumulative bytes up+down, accuracy) after each round."""
        points, sent = [], 0.0
        for r in self.rounds:
            sent += float(r.get("bytes_up") or 0) + float(r.get("bytes_down") or 0)
            if r.get("accuracy") is not None and sent > 0:
                points.append((sent, float(r["accuracy"])))
        return points


def load_run(path: str) -> Run:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"plot.py: cannot read {path}: {e}")
    if not isinstance(doc, dict) or not isinstance(doc.get("rounds"), list):
        sys.exit(f"plot.py: {path}: expected an object with a 'rounds' list")
    rounds = [r for r in doc["rounds"] if isinstance(r, dict)]
    if not rounds:
        sys.exit(f"plot.py: {path}: 'rounds' is empty")
    codec = str(doc.get("codec") or doc.get("label") or Path(path).stem)
    alpha = doc.get("alpha")
    try:
        alpha = None if alpha is None else float(alpha)
    except (TypeError, ValueError):
        sys.exit(f"plot.py: {path}: alpha {alpha!r} is not a number")
    return Run(
        path=path,
        label=str(doc.get("label") or codec),
        alpha=alpha,
        codec=codec,
        downlink_codec=doc.get("downlink_codec"),
        server_lr=float(doc.get("server_lr") or 1.0),
        rounds=sorted(rounds, key=lambda r: r.get("round", 0)),
    )


# ---------------------------------------------------------------- formatting


def human_bytes(n: float, digits: int = 3) -> str:
    """Decimal units to `digits` significant figures: 1.23 MB, 45.6 kB, 789 B."""
    if n < 1000:
        return f"{n:.0f} B"
    units = (("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12))
    i = max(j for j, (_, size) in enumerate(units) if n >= size or j == 0)
    text = f"{n / units[i][1]:#.{digits}g}"
    # 999.7 kB rounds to "1.00e+03"; say 1.00 MB instead
    if float(text) >= 1000 and i + 1 < len(units):
        i += 1
        text = f"{n / units[i][1]:#.{digits}g}"
    if "e" in text:
        text = f"{n / units[i][1]:.0f}"
    return f"{text.rstrip('.')} {units[i][0]}"


def tick_bytes(n: float) -> str:
    """Tick labels for powers of ten: 10 kB, 100 kB, 1 MB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n:g} B"


def alpha_text(alpha: float | None) -> str:
    return "iid" if alpha is None else f"{alpha:g}"


def percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def ratio(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×"


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rate(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def group_by_alpha(runs: list[Run]) -> dict[float | None, list[Run]]:
    groups: dict[float | None, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.alpha, []).append(run)
    ordered = sorted(groups, key=lambda a: (a is None, a or 0.0))
    # baseline first, then the heaviest to the lightest on the wire
    return {
        a: sorted(
            groups[a],
            key=lambda r: (not r.is_baseline, -r.per_round("bytes_up", "bytes_down")),
        )
        for a in ordered
    }


def display_name(run: Run) -> str:
    """The run's label; when that is just the uplink codec, name a different
    downlink codec too."""
    if run.label == run.codec and run.downlink_codec and run.downlink_codec != run.codec:
        return f"{run.codec} / down {run.downlink_codec}"
    return run.label


def styles(groups: dict[float | None, list[Run]]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per display name, the same in every alpha's plot."""
    names = []
    for runs in groups.values():
        for run in runs:
            name = display_name(run)
            if not run.is_baseline and name not in names:
                names.append(name)
    table = {
        name: (PALETTE[i % len(PALETTE)], MARKERS[1 + i % (len(MARKERS) - 1)])
        for i, name in enumerate(names)
    }
    for runs in groups.values():
        for run in runs:
            if run.is_baseline:
                table.setdefault(display_name(run), (BASELINE_COLOUR, MARKERS[0]))
    return table


# ---------------------------------------------------------------- markdown


def markdown_table(groups: dict[float | None, list[Run]], target: float) -> str:
    headers = [
        "codec",
        "alpha",
        "final acc (%)",
        "best acc (%)",
        f"rounds to {100 * target:g}%",
        "total uplink",
        "total downlink",
        "uplink ratio",
        "up+down ratio",
        "encode MB/s",
        "decode MB/s",
    ]
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    notes = []
    for alpha, runs in groups.items():
        baseline = next((r for r in runs if r.is_baseline), None)
        if baseline is None:
            notes.append(
                f"alpha {alpha_text(alpha)}: no fp32 run, so ratios (marked *) are "
                "raw fp32 bytes (bytes_*_raw) over bytes sent."
            )
        for run in runs:
            if baseline is not None:
                up_ratio = safe_div(baseline.per_round("bytes_up"), run.per_round("bytes_up"))
                both_ratio = safe_div(
                    baseline.per_round("bytes_up", "bytes_down"),
                    run.per_round("bytes_up", "bytes_down"),
                )
                mark = ""
            else:
                up_ratio = safe_div(run.total("bytes_up_raw"), run.total("bytes_up"))
                both_ratio = safe_div(
                    run.total("bytes_up_raw") + run.total("bytes_down_raw"),
                    run.total("bytes_up") + run.total("bytes_down"),
                )
                mark = "*"
            accuracies = run.accuracies
            reached = run.rounds_to(target)
            cells = [
                escape(display_name(run)).replace("|", "\\|"),
                alpha_text(alpha),
                percent(accuracies[-1] if accuracies else None),
                percent(max(accuracies) if accuracies else None),
                "never" if reached is None else str(reached),
                human_bytes(run.total("bytes_up")),
                human_bytes(run.total("bytes_down")),
                ratio(up_ratio) + mark,
                ratio(both_ratio) + mark,
                rate(mean(run.series("encode_mb_s"))),
                rate(mean(run.series("decode_mb_s"))),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if any(len({r.round_count for r in runs}) > 1 for runs in groups.values()):
        notes.append(
            "Runs differ in length; ratios compare mean bytes per round, totals are as run."
        )
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def safe_div(a: float, b: float) -> float | None:
    return a / b if b > 0 and a > 0 else None


# ---------------------------------------------------------------- svg


WIDTH, HEIGHT = 900, 560


def nice_step(span: float) -> float:
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25):
        if span / step <= 8:
            return step
    return 0.25


def y_domain(values: list[float]) -> tuple[float, float, float]:
    """Accuracy axis: the data range with a margin, snapped to a tick step."""
    lo, hi = min(values), max(values)
    pad = max(0.02, 0.08 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    step = nice_step(hi - lo)
    lo = math.floor(lo / step + 1e-9) * step
    hi = math.ceil(hi / step - 1e-9) * step
    if hi - lo < step:
        hi = lo + step
    return max(0.0, lo), min(1.0, hi), step


def marker(shape: str, x: float, y: float, colour: str, size: float = 3.6) -> str:
    common = f'fill="{colour}" stroke="white" stroke-width="1"'
    if shape == "square":
        s = size * 0.9
        return f'<rect x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s:.1f}" height="{2 * s:.1f}" {common}/>'
    if shape == "triangle":
        s = size * 1.2
        pts = f"{x:.1f},{y - s:.1f} {x - s:.1f},{y + 0.8 * s:.1f} {x + s:.1f},{y + 0.8 * s:.1f}"
        return f'<polygon points="{pts}" {common}/>'
    if shape == "diamond":
        s = size * 1.2
        pts = f"{x:.1f},{y - s:.1f} {x + s:.1f},{y:.1f} {x:.1f},{y + s:.1f} {x - s:.1f},{y:.1f}"
        return f'<polygon points="{pts}" {common}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size:.1f}" {common}/>'


def x_domain(xs: list[float]) -> tuple[float, float]:
    """log10 bounds: the data with a margin, at least one decade wide."""
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    if hi - lo < 1:
        mid = (lo + hi) / 2
        lo, hi = mid - 0.5, mid + 0.5
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def x_ticks(lo: float, hi: float, px_per_decade: float) -> tuple[list[float], list[float]]:
    """Labelled ticks and unlabelled minor grid lines for a log10 axis.

    Decades are labelled; with room to spare, 2x and 5x too, so a short
    axis still has several labels."""
    candidates = [
        m * 10.0**k
        for k in range(math.floor(lo), math.ceil(hi) + 1)
        for m in range(1, 10)
        if lo <= math.log10(m * 10.0**k) <= hi
    ]

    def mantissa(v: float) -> int:
        return round(v / 10.0 ** math.floor(math.log10(v) + 1e-9))

    if px_per_decade >= 220:
        labelled = [v for v in candidates if mantissa(v) in (1, 2, 5)]
    else:
        decades = [v for v in candidates if mantissa(v) == 1]
        labelled = decades[:: 1 if px_per_decade >= 70 else 2]
    minor = [v for v in candidates if v not in labelled] if px_per_decade >= 120 else []
    return labelled, minor


def legend_box(
    points: list[tuple[float, float]],
    width: float,
    height: float,
    area: tuple[float, float, float, float],
) -> tuple[tuple[float, float], int]:
    """Top-left corner of the plot corner that hides the fewest data points,
    and how many it hides; accuracy-vs-cost curves usually leave the lower
    right empty."""
    left, top, w, h = area
    inset = 10
    corners = [
        (left + w - width - inset, top + h - height - inset),
        (left + inset, top + inset),
        (left + w - width - inset, top + inset),
        (left + inset, top + h - height - inset),
    ]

    def hidden(corner: tuple[float, float]) -> int:
        cx, cy = corner
        return sum(cx - 6 <= x <= cx + width + 6 and cy - 6 <= y <= cy + height + 6 for x, y in points)

    best = min(corners, key=hidden)
    return best, hidden(best)


def svg_plot(
    alpha: float | None,
    runs: list[Run],
    target: float,
    style: dict[str, tuple[str, str]],
) -> str:
    """One chart: accuracy against cumulative bytes, a line per codec, the
    legend inside the plot where it hides no data, else beside it."""
    svg, hidden = render(alpha, runs, target, style, legend_outside=False)
    if hidden:
        svg, _ = render(alpha, runs, target, style, legend_outside=True)
    return svg


def render(
    alpha: float | None,
    runs: list[Run],
    target: float,
    style: dict[str, tuple[str, str]],
    legend_outside: bool,
) -> tuple[str, int]:
    """The chart's SVG and how many data points its legend hides."""
    series = [(run, run.cumulative_points()) for run in runs]
    series = [(run, pts) for run, pts in series if pts]
    max_chars = 30 if legend_outside else 44
    names = [display_name(run) for run, _ in series]
    names = [n if len(n) <= max_chars else n[: max_chars - 1] + "…" for n in names]
    row_h = 21
    box_w = 48 + 7.3 * max((len(n) for n in names), default=0)
    box_h = 12 + row_h * len(names)
    left, top, right, bottom = 78, 64, 28, 66
    if legend_outside:
        right += box_w + 4
    plot_w, plot_h = WIDTH - left - right, HEIGHT - top - bottom

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{left + plot_w / 2}" y="30" text-anchor="middle" font-size="18" '
        f'font-weight="bold" fill="#222">Test accuracy vs. bytes on the wire '
        f"(alpha = {alpha_text(alpha)})</text>",
        f'<text x="{left + plot_w / 2}" y="50" text-anchor="middle" font-size="12.5" '
        f'fill="#666">cumulative uplink + downlink bytes, one point per round</text>',
    ]
    if not series:
        out.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="16">'
            "no rounds with both bytes and accuracy</text></svg>"
        )
        return "\n".join(out) + "\n", 0

    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x_lo, x_hi = x_domain(xs)
    y_lo, y_hi, y_step = y_domain(ys)

    def px(x: float) -> float:
        return left + (math.log10(x) - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    def vline(x: float, colour: str) -> str:
        return (
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
            f'stroke="{colour}" stroke-width="1"/>'
        )

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fbfbfb"/>')
    labelled, minor = x_ticks(x_lo, x_hi, plot_w / (x_hi - x_lo))
    out.extend(vline(px(v), "#ececec") for v in minor)
    for value in labelled:
        out.append(vline(px(value), "#d0d0d0"))
        out.append(
            f'<text x="{px(value):.1f}" y="{top + plot_h + 20}" text-anchor="middle" '
            f'font-size="13" fill="#333">{tick_bytes(value)}</text>'
        )
    for i in range(round((y_hi - y_lo) / y_step) + 1):
        value = y_lo + i * y_step
        gy = py(value)
        out.append(
            f'<line x1="{left}" y1="{gy:.1f}" x2="{left + plot_w}" y2="{gy:.1f}" '
            'stroke="#d0d0d0" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 8}" y="{gy + 4.5:.1f}" text-anchor="end" font-size="13" '
            f'fill="#333">{100 * value:.0f}%</text>'
        )
    # the target accuracy, labelled at the left where curves are still low
    if y_lo < target < y_hi:
        gy = py(target)
        out.append(
            f'<line x1="{left}" y1="{gy:.1f}" x2="{left + plot_w}" y2="{gy:.1f}" '
            'stroke="#999" stroke-width="1.2" stroke-dasharray="5,4"/>'
        )
        out.append(
            f'<text x="{left + 6}" y="{gy - 6:.1f}" font-size="11.5" '
            f'fill="#777">{100 * target:g}% target</text>'
        )
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#888" stroke-width="1"/>'
    )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle" font-size="14" '
        'fill="#222">cumulative bytes, uplink + downlink (log scale)</text>'
    )
    out.append(
        f'<text transform="translate(22 {top + plot_h / 2}) rotate(-90)" text-anchor="middle" '
        'font-size="14" fill="#222">test accuracy</text>'
    )

    # the fp32 baseline first, dashed, so the codecs draw over it
    styled = [
        (run, pts, *style[display_name(run)], display_name(run), name)
        for (run, pts), name in zip(series, names)
    ]
    styled.sort(key=lambda s: not s[0].is_baseline)
    show_markers = max(len(pts) for _, pts in series) <= 40
    screen_points = []
    for run, pts, colour, shape, *_ in styled:
        dash = ' stroke-dasharray="7,4"' if run.is_baseline else ""
        coords = [(px(x), py(y)) for x, y in pts]
        screen_points.extend(coords)
        # segment midpoints, so a legend is not put across a long line
        screen_points.extend(((a + c) / 2, (b + d) / 2) for (a, b), (c, d) in zip(coords, coords[1:]))
        out.append(
            f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}" fill="none" '
            f'stroke="{colour}" stroke-width="2.2" stroke-linejoin="round" '
            f'stroke-linecap="round"{dash}/>'
        )
        if show_markers:
            out.extend(marker(shape, x, y, colour) for x, y in coords)
        else:
            out.append(marker(shape, *coords[-1], colour, 4.5))

    # legend in the emptiest corner of the plot, or right of it
    if legend_outside:
        (bx, by), hidden = (left + plot_w + 14, top), 0
    else:
        (bx, by), hidden = legend_box(screen_points, box_w, box_h, (left, top, plot_w, plot_h))
    out.append(
        f'<rect x="{bx:.1f}" y="{by:.1f}" width="{box_w:.1f}" height="{box_h}" fill="white" '
        'fill-opacity="0.93" stroke="#bbb" rx="4"/>'
    )
    for i, (run, _, colour, shape, full, name) in enumerate(styled):
        y = by + 6 + row_h * i + row_h / 2
        dash = ' stroke-dasharray="7,4"' if run.is_baseline else ""
        out.append(
            f'<line x1="{bx + 10:.1f}" y1="{y:.1f}" x2="{bx + 36:.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="2.2"{dash}/>'
        )
        out.append(marker(shape, bx + 23, y, colour))
        out.append(
            f'<text x="{bx + 44:.1f}" y="{y + 4.5:.1f}" font-size="12.5" fill="#222">'
            f"<title>{escape(full)}</title>{escape(name)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n", hidden


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="simulator run JSON files")
    parser.add_argument("--markdown", help="write the table here (default: stdout)")
    parser.add_argument(
        "--svg-prefix",
        help="write <prefix>_alpha<alpha>.svg per alpha (directories are created)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=0.8,
        help="accuracy for the 'rounds to' column and the plot's guide line (default 0.8)",
    )
    args = parser.parse_args(argv)

    groups = group_by_alpha([load_run(p) for p in args.runs])
    table = markdown_table(groups, args.target)

    svg_paths = []
    if args.svg_prefix:
        prefix = Path(args.svg_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        style = styles(groups)
        for alpha, runs in groups.items():
            path = prefix.with_name(f"{prefix.name}_alpha{alpha_text(alpha)}.svg")
            path.write_text(svg_plot(alpha, runs, args.target, style), encoding="utf-8")
            svg_paths.append((alpha, path))
            print(f"wrote {path}", file=sys.stderr)

    if args.markdown:
        md_path = Path(args.markdown)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        body = table
        for alpha, path in svg_paths:
            rel = os.path.relpath(path, md_path.parent)
            body += f"\n![accuracy vs bytes, alpha {alpha_text(alpha)}]({rel})\n"
        md_path.write_text(body, encoding="utf-8")
        print(f"wrote {md_path}", file=sys.stderr)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
