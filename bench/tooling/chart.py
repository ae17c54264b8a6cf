#!/usr/bin/env python3
"""The benchmark chart, as a self-contained SVG, from the numbers bench/tooling/report.py computed
(standard library only, so a fresh machine needs nothing installed to draw it).

    python3 bench/tooling/chart.py RESULTS.json OUT.svg     (RESULTS.json: written by report.py)

Panels: (1) throughput ratio lease_sched / baseline per case and synchronous_commit
setting, with the target of each case; (2) throughput as a share of the SELECT 1 ceiling;
(3) sweep and claim latency by history size, relative to the smallest size; (4) the scale
run: server CPU and WAL rate.
"""
import json
import math
import sys
from html import escape

W = 1000
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
COLORS = {"ext": "#1f77b4", "base": "#ff7f0e", "on": "#1f77b4", "off": "#6baed6", "target": "#d62728"}
SYNC_COLORS = ["#1f77b4", "#9ecae1", "#08519c", "#c6dbef"]


class Svg:
    def __init__(self):
        self.parts = []
        self.y = 0

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", color="#222"):
        self.add(f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
                 f"font-weight='{weight}' fill='{color}' {FONT}>{escape(str(s))}</text>")

    def rect(self, x, y, w, h, color, title=None):
        t = f"<title>{escape(title)}</title>" if title else ""
        self.add(f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(w, 0):.1f}' height='{h:.1f}' fill='{color}'>{t}</rect>")

    def line(self, x1, y1, x2, y2, color="#888", width=1, dash=None):
        d = f" stroke-dasharray='{dash}'" if dash else ""
        self.add(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{color}' "
                 f"stroke-width='{width}'{d}/>")

    def legend(self, x, y, items):
        for label, color in items:
            self.rect(x, y - 10, 12, 12, color)
            self.text(x + 16, y, label, 11)
            x += 24 + 7 * len(label)

    def svg(self):
        h = self.y + 20
        return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{h}' viewBox='0 0 {W} {h}'>"
                f"<rect width='{W}' height='{h}' fill='white'/>" + "".join(self.parts) + "</svg>\n")


def hbars(svg, title, rows, series, scale, ticks, marks=None, fmt=str):
    """Horizontal grouped bars. rows: labels; series: [(name, color, [value per row])];
    scale: value -> 0..1; marks: per row, a value drawn as a red tick (the target)."""
    left, right = 230, W - 90
    bar_h, gap = 11, 9
    svg.text(20, svg.y + 22, title, 15, weight="bold")
    svg.legend(left, svg.y + 44, [(n, c) for n, c, _ in series] + ([("target", COLORS["target"])] if marks else []))
    top = svg.y + 58
    group_h = bar_h * len(series) + gap
    bottom = top + group_h * len(rows)
    for t in ticks:
        x = left + scale(t) * (right - left)
        svg.line(x, top - 4, x, bottom, "#ddd" if t != 1 else "#666", 1)
        svg.text(x, bottom + 14, fmt(t), 10, "middle", color="#555")
    for i, label in enumerate(rows):
        y = top + i * group_h
        svg.text(left - 8, y + group_h / 2 + 2, label, 12, "end")
        for j, (name, color, values) in enumerate(series):
            v = values[i]
            if v is None:
                continue
            w = scale(v) * (right - left)
            svg.rect(left, y + j * bar_h, w, bar_h - 1, color, f"{label} {name}: {fmt(v)}")
            tx = left + w + 4
            if marks and marks[i] is not None and abs(left + scale(marks[i]) * (right - left) - tx) < 30:
                tx = left + scale(marks[i]) * (right - left) + 5  # keep the label clear of the target tick
            svg.text(max(tx, left + w + 4), y + j * bar_h + bar_h - 2, fmt(v), 10, color="#333")
        if marks and marks[i] is not None:
            x = left + scale(marks[i]) * (right - left)
            svg.line(x, y - 2, x, y + bar_h * len(series) + 1, COLORS["target"], 2)
    svg.y = bottom + 30


def log_scale(lo, hi):
    return lambda v: (math.log(max(v, lo)) - math.log(lo)) / (math.log(hi) - math.log(lo))


def ratio_panel(svg, out):
    syncs = list(out["sync"])
    if not syncs:
        return
    cases = []
    for s in syncs:
        for r in out["sync"][s]["cases"]:
            if r["label"] not in [c[1] for c in cases]:
                cases.append((r["case"], r["label"], r.get("target")))
    values = [r["ratio"] for s in syncs for r in out["sync"][s]["cases"] if r["ratio"]]
    lo = min([0.25] + [v / 1.5 for v in values])
    hi = max([8] + [v * 1.5 for v in values])
    ticks = [t for t in (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if lo <= t <= hi]
    series = []
    for k, s in enumerate(syncs):
        by = {r["case"]: r["ratio"] for r in out["sync"][s]["cases"]}
        series.append((f"synchronous_commit={s}", SYNC_COLORS[k % 4], [by.get(c) for c, _, _ in cases]))
    hbars(svg, "Throughput, lease_sched ÷ baseline (log scale; > 1 = extension faster)",
          [l for _, l, _ in cases], series, log_scale(lo, hi), ticks, [t for _, _, t in cases],
          lambda v: f"{v:.2f}×" if v < 10 else f"{v:.0f}×")


def ceiling_panel(svg, out):
    if not out["sync"]:
        return
    s = list(out["sync"])[0]
    # The batch case moves 1000 rows per transaction: its tps is no round-trip rate.
    rows = [r for r in out["sync"][s]["cases"] if r["case"] != "touch_batch"]
    ceiling = out["sync"][s]["ceiling"]["tps"]
    if not ceiling:
        return
    series = [("lease_sched", COLORS["ext"], [r["ext_of_ceiling"] for r in rows]),
              ("baseline", COLORS["base"], [r["base_of_ceiling"] for r in rows])]
    hbars(svg, f"Throughput as a share of the SELECT 1 ceiling ({ceiling:,.0f} tps, synchronous_commit={s})",
          [r["label"] for r in rows], series, lambda v: min(v, 1.2) / 1.2, [0, 0.25, 0.5, 0.75, 1.0],
          fmt=lambda v: f"{100 * v:.0f}%")


def history_panel(svg, out):
    h = out["history"]
    if len(h) < 2:
        return
    left, right = 230, W - 90
    svg.text(20, svg.y + 22, "Cost by finished rows in history, relative to the smallest size (pgbench -c 1; "
             "target ≤ 1.5×)", 15, weight="bold")
    lines = [(f"sweep() ({h[0]['sweep']['lat']:.2f} ms at {h[0]['rows']:,})", "#2ca02c",
              [x["sweep"]["lat"] for x in h]),
             (f"claim, lease_sched ({h[0]['claim_ext']['lat']:.3f} ms)", COLORS["ext"],
              [x["claim_ext"]["lat"] for x in h]),
             (f"claim, baseline ({h[0]['claim_base']['lat']:.3f} ms)", COLORS["base"],
              [x["claim_base"]["lat"] for x in h])]
    svg.legend(left, svg.y + 44, [(n, c) for n, c, _ in lines])
    top, height = svg.y + 60, 180
    rel = [[(v / vs[0]) if v and vs[0] else None for v in vs] for _, _, vs in lines]
    ymax = max([2.0] + [v * 1.1 for r in rel for v in r if v])
    xs = [x["rows"] for x in h]
    xscale = log_scale(min(xs), max(xs))
    svg.line(left, top + height, right, top + height, "#666")
    for k in range(5):
        v = ymax * k / 4
        y = top + height - height * k / 4
        svg.line(left, y, right, y, "#eee")
        svg.text(left - 8, y + 4, f"{v:.1f}×", 10, "end", color="#555")
    yt = top + height - height * 1.5 / ymax
    svg.line(left, yt, right, yt, COLORS["target"], 1.5, "6,4")
    for x in xs:
        px = left + xscale(x) * (right - left)
        svg.text(px, top + height + 15, f"{x:,}", 10, "middle", color="#555")
    for (name, color, _), vs in zip(lines, rel):
        pts = [(left + xscale(x) * (right - left), top + height - height * v / ymax) for x, v in zip(xs, vs) if v]
        if len(pts) > 1:
            svg.add(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='"
                    + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + "'/>")
        for (a, b), v in zip(pts, [v for v in vs if v]):
            svg.add(f"<circle cx='{a:.1f}' cy='{b:.1f}' r='3' fill='{color}'><title>{name}: {v:.2f}×</title></circle>")
    svg.y = top + height + 40


def scale_panel(svg, out):
    sc = out["scale"]
    if not sc:
        return
    rows = [f"{'lease_sched' if s['side'] == 'ext' else 'baseline'}, sync={s['sync']}" for s in sc]
    cpu = [s["cpu_cores"] for s in sc]
    wal = [s["wal_per_s"] / 1024 if s["wal_per_s"] is not None else None for s in sc]
    secs = sc[0]["secs"]
    cmax = max([c for c in cpu if c] + [0.5])
    hbars(svg, f"Scale run ({sc[0]['target_tps']:,} beats/s open loop, {secs:.0f} s): server CPU (cores of 2)",
          rows, [("server CPU", "#9467bd", cpu)], lambda v: v / (cmax * 1.15),
          [round(cmax * k / 4, 2) for k in range(5)], fmt=lambda v: f"{v:.2f}")
    wmax = max([w for w in wal if w] + [1])
    hbars(svg, "Scale run: WAL written (KiB/s)", rows, [("WAL", "#8c564b", wal)], lambda v: v / (wmax * 1.15),
          [round(wmax * k / 4) for k in range(5)], fmt=lambda v: f"{v:,.0f}")


def render(out, path):
    svg = Svg()
    m = out["meta"]
    svg.text(20, 26, f"lease_sched vs hand-written SQL — {m['stamp']}{' (quick)' if m['quick'] else ''}", 18,
             weight="bold")
    svg.text(20, 46, f"PostgreSQL {m['server']}, {m['cores']} cores, {m['mem_gib']} GiB; pgbench -M prepared "
             f"-c {m['clients']} -j {m['threads']} -T {m['duration']}, median of {m['rounds']} round(s)", 12,
             color="#555")
    svg.y = 56
    ratio_panel(svg, out)
    ceiling_panel(svg, out)
    history_panel(svg, out)
    scale_panel(svg, out)
    with open(path, "w") as f:
        f.write(svg.svg())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    render(json.load(open(sys.argv[1])), sys.argv[2])
