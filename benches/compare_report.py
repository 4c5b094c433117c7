#!/usr/bin/env python3
"""The summary of benches/compare.sh: a table of medians and ratios on stdout, and the same
medians as an SVG bar chart.

    compare_report.py RESULTS.tsv CHART.svg

RESULTS.tsv has one line per run, tab-separated:

    pass  impl  device  workload  qd  rep  rate  vmhwm_kb

impl is "ours" or "theirs"; rate is requests per second (NaN: the run failed); vmhwm_kb is
the daemon's peak RSS (0: not known). Lines starting with "#" are comments; the first one
is printed under the chart's title (compare.sh writes its settings there).

Only the standard library is used; the SVG is written by hand.
"""

import math
import statistics
import sys
from collections import defaultdict
from xml.sax.saxutils import escape

NAMES = {
    "blk": ("vhost-user-blk", "qemu-storage-daemon"),
    "rng": ("vhost-user-rng", "vhost-device-rng"),
    "vsock": ("vhost-user-vsock", "vhost-device-vsock"),
}
OURS_COLOR = "#2b6cb0"
THEIRS_COLOR = "#dd8452"


def read(path):
    rates = defaultdict(list)
    hwm = defaultdict(int)
    note = ""
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("#"):
                if not note:
                    note = line.lstrip("#").strip()
                continue
            p, impl, dev, wl, qd, _rep, rate, kb = line.split("\t")
            r = float(rate)
            if not math.isnan(r):
                rates[(p, dev, wl, int(qd), impl)].append(r)
            hwm[(dev, impl)] = max(hwm[(dev, impl)], int(kb))
    return rates, hwm, note


def summarize(rates):
    """[(pass, [(device, workload, qd, ours runs, theirs runs, ours median, theirs median)])]"""
    keys = sorted({k[:4] for k in rates}, key=lambda k: (k[0] != "pinned", k[0], k[1], k[2], k[3]))
    passes = []
    for p in dict.fromkeys(k[0] for k in keys):
        rows = []
        for k in (k for k in keys if k[0] == p):
            o, t = rates.get(k + ("ours",), []), rates.get(k + ("theirs",), [])
            mo = statistics.median(o) if o else float("nan")
            mt = statistics.median(t) if t else float("nan")
            rows.append((k[1], k[2], k[3], o, t, mo, mt))
        passes.append((p, rows))
    return passes


def ratio(mo, mt):
    return mo / mt if not math.isnan(mo) and not math.isnan(mt) and mt else float("nan")


def print_table(passes, hwm):
    for p, rows in passes:
        print(f"\n== {p} ==")
        print(f"{'device':<6} {'workload':<10} {'qd':>3} {'ours req/s':>12} {'theirs req/s':>13} {'ours/theirs':>12}   runs (ours | theirs)")
        for dev, wl, qd, o, t, mo, mt in rows:
            runs = " ".join(f"{x:.0f}" for x in o) + " | " + " ".join(f"{x:.0f}" for x in t)
            print(f"{dev:<6} {wl:<10} {qd:>3} {mo:>12.0f} {mt:>13.0f} {ratio(mo, mt):>11.2f}x   {runs}")
    if any(hwm.values()):
        print("\n== peak RSS (largest VmHWM over all runs) ==")
        for dev in sorted({d for d, _ in hwm}):
            ours, theirs = NAMES.get(dev, ("ours", "theirs"))
            print(f"{dev:<6} {ours:<22} {hwm.get((dev, 'ours'), 0):>8} kB   {theirs:<22} {hwm.get((dev, 'theirs'), 0):>8} kB")


def nice_step(top, ticks=5):
    """A 1, 2 or 5 times a power of ten step that splits 0..top into about `ticks` parts."""
    raw = top / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def short(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def svg_chart(passes, note):
    """Horizontal bars, two per case (ours above theirs), one scale for the whole chart."""
    label_w, bar_w, right_w = 170, 480, 170
    width = label_w + bar_w + right_w
    bar_h, pair_gap, group_gap = 16, 12, 10
    values = [v for _, rows in passes for r in rows for v in r[5:7] if not math.isnan(v)]
    top = max(values) if values else 1.0
    step = nice_step(top)
    scale_max = step * math.ceil(top / step)
    x0 = label_w

    def x(v):
        return x0 + bar_w * v / scale_max

    out = []
    y = 0

    def text(tx, ty, s, size=12, anchor="start", weight="normal", color="#222"):
        out.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{color}">{escape(s)}</text>'
        )

    y += 24
    text(width / 2, y, "vhost-user back-ends: requests per second, median (longer is faster)",
         size=15, anchor="middle", weight="bold")
    if note:
        y += 18
        text(width / 2, y, note, size=11, anchor="middle", color="#555")
    # legend
    y += 22
    devices = list(dict.fromkeys(r[0] for _, rows in passes for r in rows))
    ours_names = ", ".join(NAMES.get(d, ("ours", ""))[0] for d in devices) or "ours"
    theirs_names = ", ".join(NAMES.get(d, ("", "theirs"))[1] for d in devices) or "theirs"
    lx = label_w
    out.append(f'<rect x="{lx}" y="{y - 10}" width="12" height="12" fill="{OURS_COLOR}"/>')
    text(lx + 16, y, f"ours ({ours_names})", size=12)
    lx += 16 + 6.5 * len(f"ours ({ours_names})") + 24
    out.append(f'<rect x="{lx}" y="{y - 10}" width="12" height="12" fill="{THEIRS_COLOR}"/>')
    text(lx + 16, y, f"theirs ({theirs_names})", size=12)
    y += 12

    for p, rows in passes:
        y += 24
        text(8, y, f"{p} pass", size=13, weight="bold")
        y += 8
        body_top = y
        body_h = len(rows) * (2 * bar_h + pair_gap) + group_gap
        # grid and tick labels
        ticks = []
        v = 0.0
        while v <= scale_max + step / 2:
            ticks.append(v)
            v += step
        for t in ticks:
            out.append(
                f'<line x1="{x(t):.1f}" y1="{body_top}" x2="{x(t):.1f}" y2="{body_top + body_h}" '
                f'stroke="#ddd" stroke-width="1"/>'
            )
        y += group_gap // 2
        for dev, wl, qd, _o, _t, mo, mt in rows:
            label = f"{dev} {'fill' if wl == dev else wl} QD{qd}"
            text(label_w - 10, y + bar_h + pair_gap / 4 + 4, label, size=12, anchor="end")
            for i, (m, color) in enumerate(((mo, OURS_COLOR), (mt, THEIRS_COLOR))):
                by = y + i * bar_h
                if math.isnan(m):
                    text(x0 + 4, by + bar_h - 4, "failed", size=11, color="#b00")
                    continue
                w = max(x(m) - x0, 1.0)
                out.append(
                    f'<rect x="{x0}" y="{by + 1}" width="{w:.1f}" height="{bar_h - 2}" fill="{color}"/>'
                )
                text(x0 + w + 4, by + bar_h - 4, f"{m:,.0f}", size=11)
            r = ratio(mo, mt)
            if not math.isnan(r):
                text(width - 14, y + bar_h + 4, f"ours/theirs {r:.2f}×", size=12, anchor="end",
                     weight="bold", color="#1a7f37" if r >= 1 else "#b00")
            y += 2 * bar_h + pair_gap
        y = body_top + body_h
        out.append(
            f'<line x1="{x0}" y1="{body_top}" x2="{x0}" y2="{y}" stroke="#555" stroke-width="1"/>'
        )
        y += 14
        for t in ticks:
            text(x(t), y, short(t), size=10, anchor="middle", color="#555")
        y += 4
    y += 16
    text(x0 + bar_w / 2, y, "requests per second (4 KiB requests)", size=11, anchor="middle",
         color="#555")
    y += 12
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'viewBox="0 0 {width} {y}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">'
    )
    bg = f'<rect x="0" y="0" width="{width}" height="{y}" fill="#fff"/>'
    return "\n".join([head, bg] + out + ["</svg>", ""])


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare_report.py RESULTS.tsv CHART.svg")
    rates, hwm, note = read(sys.argv[1])
    passes = summarize(rates)
    print_table(passes, hwm)
    with open(sys.argv[2], "w") as f:
        f.write(svg_chart(passes, note))


if __name__ == "__main__":
    main()
