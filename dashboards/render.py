#!/usr/bin/env python3
"""Render a Grafana dashboard JSON to a PNG from live Prometheus data.

Grafana itself is not available from any package registry this project's
machines reach (no Debian package, no PyPI wheel, no crate), so this is our
own small renderer of the same dashboard JSON and the same PromQL queries: it
lays the panels out by their ``gridPos`` (24 columns, one height unit = 30 px),
keeps their titles, substitutes the Grafana macros and template variables the
way Grafana would, asks Prometheus's HTTP API for the data and draws each panel
with matplotlib (Agg backend) in a Grafana-like dark style:

* timeseries (and any unknown type): one line per series, legend from the
  target's ``legendFormat``, stacking, fill, colour overrides, y axis in the
  panel's unit;
* stat / gauge: the instant value (summed over series) as large text;
* heatmap: time x bucket matrix from the ``le`` label;
* bargauge / barchart: one bar per series (instant or last value), vertical
  when the panel's ``options.orientation`` is "vertical", else horizontal;
* text: the markdown content as wrapped text (bold, italic and code spans
  kept, other markdown stripped);
* row: the row's title as a section header (rows are not counted as panels).

Targets with ``format: heatmap`` are turned from cumulative ``le`` buckets into
per-bucket counts, as Grafana's Prometheus data source does.

Macros: ``$__rate_interval`` = max(4 * step, 60s), ``$__range`` = the range in
seconds, ``$__interval`` = step, where step = max(1, range // 150) seconds.
Template variables (``$tenant``, ``${result}``...) default to ``.*`` (All).

Run it (the test ``cargo test --test prometheus`` does so for every dashboard)::

    .venv/bin/python dashboards/render.py --prometheus http://127.0.0.1:9090 \\
        --dashboard dashboards/grafana/modelcache-overview.json \\
        --out overview.png [--range-seconds 900] [--var tenant=alpha]

It prints one JSON line: {"dashboard", "panels", "drawn", "empty", "out"},
exits 0 when the PNG is written (even if some panels have no data) and 2 with
a message on stderr when Prometheus cannot be queried or a JSON is invalid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

# ---------------------------------------------------------------- layout/style

DPI = 100
WIDTH_PX = 1800
COL_PX = WIDTH_PX / 24
ROW_PX = 30
HEADER_PX = 52
GAP_PX = 4  # half the gap between two panels

BG = "#111217"
PANEL_BG = "#181b1f"
BORDER = "#2a2d33"
TEXT = "#ccccdc"
TEXT_DIM = "#8e8e9a"
GRID = "#2a2d33"

TITLE_PT = 10
TICK_PT = 7.5
LEGEND_PT = 8

RANGE_TYPES = {"timeseries", "barchart", "heatmap", "graph", "state-timeline"}
INSTANT_TYPES = {"stat", "gauge", "bargauge", "piechart", "table"}

# Grafana's "palette-classic".
PALETTE = [
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1",
    "#BA43A9", "#705DA0", "#508642", "#CCA300", "#447EBC", "#C15C17",
    "#890F02", "#0A437C", "#6D1F62", "#584477", "#B7DBAB", "#F4D598",
]

# Grafana's named colours (dark theme).
NAMED = {
    "green": "#73BF69", "dark-green": "#37872D", "semi-dark-green": "#56A64B",
    "light-green": "#96D98D", "super-light-green": "#C8F2C2",
    "red": "#F2495C", "dark-red": "#C4162A", "semi-dark-red": "#E02F44",
    "light-red": "#FF7383", "super-light-red": "#FFA6B0",
    "orange": "#FF9830", "dark-orange": "#FA6400", "semi-dark-orange": "#FF780A",
    "light-orange": "#FFB357", "super-light-orange": "#FFCB7D",
    "yellow": "#FADE2A", "dark-yellow": "#E0B400", "semi-dark-yellow": "#F2CC0C",
    "light-yellow": "#FFEE52", "super-light-yellow": "#FFF899",
    "blue": "#5794F2", "dark-blue": "#1F60C4", "semi-dark-blue": "#3274D9",
    "light-blue": "#8AB8FF", "super-light-blue": "#C0D8FF",
    "purple": "#B877D9", "dark-purple": "#8F3BB8", "semi-dark-purple": "#A352CC",
    "light-purple": "#CA95E5", "super-light-purple": "#DEB6F2",
    "text": TEXT, "transparent": "none",
}


def color_of(name, default=TEXT):
    if not name:
        return default
    if name in NAMED:
        return NAMED[name]
    m = re.fullmatch(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*([\d.]+)\s*)?\)", name)
    if m:
        r, g, b = (float(m.group(i)) / 255 for i in (1, 2, 3))
        a = float(m.group(4)) if m.group(4) else 1.0
        return (r, g, b, a)
    try:
        mcolors.to_rgba(name)
        return name
    except ValueError:
        return default


class Fail(Exception):
    """An HTTP or JSON error: exit 2."""


# ------------------------------------------------------------------- units

SI_SHORT = [(1e12, " Tri"), (1e9, " Bil"), (1e6, " Mil"), (1e3, " K")]
SI_COUNT = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")]
TIME_S = [(3600.0, " hour"), (60.0, " min"), (1.0, " s"), (1e-3, " ms"), (1e-6, " µs"), (1e-9, " ns")]
BYTES = [(1024.0**4, " TiB"), (1024.0**3, " GiB"), (1024.0**2, " MiB"), (1024.0, " KiB")]


def unit_scale(unit, magnitude):
    """(divisor, prefix, suffix) to show numbers around ``magnitude`` in ``unit``."""
    unit = unit or "none"
    mag = abs(magnitude) if magnitude and math.isfinite(magnitude) else 0.0
    if unit == "percentunit":
        return 0.01, "", "%"
    if unit == "percent":
        return 1.0, "", "%"
    if unit in ("s", "ms"):
        base = 1.0 if unit == "s" else 1e-3
        secs = mag * base
        for div, suf in TIME_S:
            if secs >= div:
                return div / base, "", suf
        return (1.0, "", " s") if unit == "s" else (1.0, "", " ms")
    if unit in ("bytes", "decbytes"):
        for div, suf in BYTES:
            if mag >= div:
                return div, "", suf
        return 1.0, "", " B"
    if unit == "short":
        for div, suf in SI_SHORT:
            if mag >= div:
                return div, "", suf
        return 1.0, "", ""
    counts = {"reqps": "req/s", "ops": "ops/s", "rps": "rd/s", "wps": "wr/s", "iops": "io/s"}
    if unit in counts:
        for div, si in SI_COUNT:
            if mag >= div:
                return div, "", f"{si} {counts[unit]}"
        return 1.0, "", f" {counts[unit]}"
    if unit == "currencyUSD":
        for div, suf in SI_COUNT:
            if mag >= div:
                return div, "$", suf
        return 1.0, "$", ""
    if unit.startswith("suffix:"):
        return 1.0, "", unit[len("suffix:"):]
    if unit.startswith("prefix:"):
        return 1.0, unit[len("prefix:"):], ""
    return 1.0, "", ""


def auto_decimals(x):
    """Decimals that show about three significant digits of ``x``."""
    x = abs(x)
    if x == 0 or not math.isfinite(x):
        return 0
    d = 2 - int(math.floor(math.log10(x)))
    return max(0, min(d, 6))


def fmt_value(v, unit, decimals=None):
    if v is None or not math.isfinite(v):
        return "No data" if v is None or math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    mag = v
    for _ in range(2):  # again if rounding moved the value into the next scale (999.96 us -> 1.00 ms)
        div, pre, suf = unit_scale(unit, mag)
        x = v / div
        d = decimals if decimals is not None else auto_decimals(mag / div)
        if decimals is None and div == 1 and not pre and abs(x) >= 1 and abs(x - round(x)) < 1e-9:
            d = 0
        s = f"{x:.{d}f}"
        if unit_scale(unit, float(s) * div)[0] == div:
            break
        mag = float(s) * div
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    if pre and s.startswith("-"):
        return f"-{pre}{s[1:]}{suf}"
    return f"{pre}{s}{suf}"


def step_decimals(step):
    """Decimals needed to show multiples of ``step`` exactly."""
    if not step > 0:
        return 0
    for d in range(7):
        x = step * 10**d
        if abs(x - round(x)) < 1e-6 * max(1.0, x):
            return d
    return 6


def axis_ticks(unit, lo, hi, nbins):
    """Nice tick positions in the unit's display scale, and their formatter."""
    div, pre, suf = unit_scale(unit, max(abs(lo), abs(hi)))
    _zdiv, zpre, zsuf = unit_scale(unit, 0.0)
    loc = ticker.MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10])
    ticks = [t * div for t in loc.tick_values(lo / div, hi / div)]
    ticks = [t for t in ticks if lo - 1e-9 * (hi - lo) <= t <= hi + 1e-9 * (hi - lo)]
    gaps = [b - a for a, b in zip(ticks, ticks[1:]) if b > a]
    d = step_decimals(min(gaps) / div) if gaps else 0

    def f(v, _pos=None):
        if abs(v) <= 1e-12 * max(abs(lo), abs(hi), 1e-300):
            return f"{zpre}0{zsuf}"
        s = f"{v / div:.{d}f}"
        if pre and s.startswith("-"):
            return f"-{pre}{s[1:]}{suf}"
        return f"{pre}{s}{suf}"

    return ticks, f


# --------------------------------------------------------------- Prometheus


class Prometheus:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def get(self, path, params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        what = f"{self.base}{path} query={params.get('query')!r}" if "query" in params else url
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:500]
            raise Fail(f"GET {what}: HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise Fail(f"GET {what}: {e}") from e
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as e:
            raise Fail(f"GET {what}: invalid JSON ({e})") from e
        if not isinstance(doc, dict) or doc.get("status") != "success":
            raise Fail(f"GET {what}: {str(doc)[:500]}")
        return doc.get("data", {})

    def query_range(self, expr, start, end, step):
        data = self.get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)})
        out = []
        if data.get("resultType") != "matrix":
            return out
        n = int(round((end - start) / step)) + 1
        for r in data.get("result", []):
            v = np.full(n, np.nan)
            for ts, val in r.get("values", []):
                i = int(round((float(ts) - start) / step))
                if 0 <= i < n:
                    v[i] = float(val)
            out.append((r.get("metric", {}), v))
        return out

    def query(self, expr, at):
        data = self.get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        kind = data.get("resultType")
        res = data.get("result", [])
        if kind == "vector":
            return [(r.get("metric", {}), float(r["value"][1])) for r in res]
        if kind == "scalar":
            return [({}, float(res[1]))]
        if kind == "matrix":
            return [(r.get("metric", {}), float(r["values"][-1][1])) for r in res if r.get("values")]
        return []


# ---------------------------------------------------------------- queries


class Context:
    def __init__(self, prom, range_s, variables):
        self.prom = prom
        self.range_s = range_s
        self.step = max(1, range_s // 150)
        self.end = float(int(time.time()))
        self.start = self.end - range_s
        self.vars = variables
        self.rate_interval = max(4 * self.step, 60)

    def macros(self, s):
        repl = {
            "__rate_interval": f"{self.rate_interval}s",
            "__range_ms": str(self.range_s * 1000),
            "__range_s": str(self.range_s),
            "__range": f"{self.range_s}s",
            "__interval_ms": str(self.step * 1000),
            "__interval": f"{self.step}s",
        }

        def sub(m):
            name = m.group(1) or m.group(3)
            if name in repl:
                return repl[name]
            if name in self.vars:
                return self.vars[name]
            return m.group(0)

        return re.sub(r"\$\{(\w+)(:\w+)?\}|\$(\w+)", sub, s)

    def title(self, s):
        """Panel titles show variables as Grafana does ('All' for .*)."""

        def sub(m):
            name = m.group(1) or m.group(3)
            if name in self.vars:
                v = self.vars[name]
                return "All" if v in (".*", ".+", "$__all") else v
            return m.group(0)

        return re.sub(r"\$\{(\w+)(:\w+)?\}|\$(\w+)", sub, s or "")


def legend_name(fmt, labels, expr):
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*([\w.]+)\s*\}\}", lambda m: str(labels.get(m.group(1), "")), fmt).strip() or expr
    rest = {k: v for k, v in labels.items() if k != "__name__"}
    name = labels.get("__name__", "")
    if rest:
        return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(rest.items())) + "}"
    return name or expr


def le_key(le):
    try:
        return float(le)
    except (TypeError, ValueError):
        return math.inf


def deaccumulate(series):
    """Cumulative le buckets -> per-bucket counts (Grafana's 'heatmap' format)."""
    groups = {}
    for s in series:
        key = tuple(sorted((k, v) for k, v in s["labels"].items() if k != "le"))
        groups.setdefault(key, []).append(s)
    out = []
    for group in groups.values():
        group.sort(key=lambda s: le_key(s["labels"].get("le")))
        prev = None
        for s in group:
            cur = np.asarray(s["v"], dtype=float)
            if prev is not None:
                s = dict(s, v=np.clip(cur - prev, 0, None) if cur.ndim else max(0.0, cur - prev))
            out.append(s)
            prev = cur
    return out


def fetch(panel, ctx):
    """Series of the panel: dicts with name, labels, v (array or float), target."""
    kind = panel.get("type")
    use_range = kind in RANGE_TYPES or kind not in INSTANT_TYPES
    series = []
    for tgt in panel.get("targets") or []:
        expr = tgt.get("expr")
        if not expr or tgt.get("hide"):
            continue
        q = ctx.macros(expr)
        if use_range:
            got = ctx.prom.query_range(q, ctx.start, ctx.end, ctx.step)
        else:
            got = ctx.prom.query(q, ctx.end)
        part = [
            {"labels": labels, "v": v, "target": tgt, "name": legend_name(tgt.get("legendFormat"), labels, q)}
            for labels, v in got
        ]
        if tgt.get("format") == "heatmap":
            part = deaccumulate(part)
        series.extend(part)
    return series


def has_finite(series):
    return any(np.isfinite(np.asarray(s["v"], dtype=float)).any() for s in series)


# ------------------------------------------------------------------ drawing


class Canvas:
    def __init__(self, height_px):
        self.W = WIDTH_PX
        self.H = height_px
        self.fig = plt.figure(figsize=(self.W / DPI, self.H / DPI), dpi=DPI, facecolor=BG)
        self.renderer = self.fig.canvas.get_renderer()
        self._widths = {}

    def rect(self, x, y, w, h):
        """Figure fractions of a box given in px from the top left."""
        return [x / self.W, 1 - (y + h) / self.H, max(w, 1) / self.W, max(h, 1) / self.H]

    def text(self, x, y, s, **kw):
        kw.setdefault("color", TEXT)
        return self.fig.text(x / self.W, 1 - y / self.H, s, **kw)

    def width(self, s, size, weight="normal"):
        key = (s, size, weight)
        if key not in self._widths:
            prop = FontProperties(size=size, weight=weight)
            w, _h, _d = self.renderer.get_text_width_height_descent(s, prop, ismath=False)
            self._widths[key] = w
        return self._widths[key]

    def fit(self, s, size, width, weight="normal"):
        if self.width(s, size, weight) <= width:
            return s
        while s and self.width(s + "…", size, weight) > width:
            s = s[:-1]
        return s + "…"

    def axes(self, x, y, w, h, **kw):
        return self.fig.add_axes(self.rect(x, y, w, h), **kw)


def style_axes(ax):
    ax.set_facecolor("none")
    for side, sp in ax.spines.items():
        sp.set_visible(False)
    ax.tick_params(colors=TEXT_DIM, labelsize=TICK_PT, length=0, pad=4)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)


def fieldconfig(panel):
    return (panel.get("fieldConfig") or {}).get("defaults") or {}


def overrides_for(panel, name):
    """Properties from fieldConfig.overrides that match a series name."""
    props = {}
    for ov in (panel.get("fieldConfig") or {}).get("overrides") or []:
        m = ov.get("matcher") or {}
        opt = m.get("options")
        ok = False
        if m.get("id") == "byName":
            ok = opt == name
        elif m.get("id") == "byRegexp" and isinstance(opt, str):
            pat = opt[1:-1] if len(opt) > 1 and opt.startswith("/") and opt.endswith("/") else opt
            try:
                ok = re.search(pat, name) is not None
            except re.error:
                ok = False
        if ok:
            for p in ov.get("properties") or []:
                props[p.get("id")] = p.get("value")
    return props


def series_color(panel, name, index):
    ov = overrides_for(panel, name)
    c = ov.get("color")
    if isinstance(c, dict) and c.get("mode") == "fixed":
        return color_of(c.get("fixedColor"))
    dc = fieldconfig(panel).get("color") or {}
    if dc.get("mode") == "fixed":
        return color_of(dc.get("fixedColor"))
    return PALETTE[index % len(PALETTE)]


def threshold_color(panel, value):
    fc = fieldconfig(panel)
    cm = (fc.get("color") or {}).get("mode")
    if cm == "fixed":
        return color_of((fc.get("color") or {}).get("fixedColor"))
    steps = ((fc.get("thresholds") or {}).get("steps")) or []
    color = NAMED["green"]
    for st in steps:
        if st.get("value") is None or (value is not None and math.isfinite(value) and value >= st["value"]):
            color = color_of(st.get("color"), color)
    return color


class Panel:
    """A panel's box in px and its drawing helpers."""

    PAD = 8
    TITLE_H = 26

    def __init__(self, cv, panel, ctx):
        gp = panel.get("gridPos") or {}
        self.cv = cv
        self.p = panel
        self.ctx = ctx
        self.x = gp.get("x", 0) * COL_PX + GAP_PX
        self.y = HEADER_PX + gp.get("y", 0) * ROW_PX + GAP_PX
        self.w = gp.get("w", 12) * COL_PX - 2 * GAP_PX
        self.h = gp.get("h", 8) * ROW_PX - 2 * GAP_PX
        self.title = ctx.title(panel.get("title", ""))

    def frame(self):
        ax = self.cv.axes(self.x, self.y, self.w, self.h)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor(PANEL_BG)
        for sp in ax.spines.values():
            sp.set_color(BORDER)
            sp.set_linewidth(1)
        ax.set_zorder(-10)
        t = self.cv.fit(self.title, TITLE_PT, self.w - 2 * self.PAD, "semibold")
        self.cv.text(self.x + self.PAD, self.y + 7, t, fontsize=TITLE_PT, weight="semibold", va="top", ha="left")

    def no_data(self):
        self.cv.text(self.x + self.w / 2, self.y + self.TITLE_H + (self.h - self.TITLE_H) / 2, "No data",
                     fontsize=11, color=TEXT_DIM, ha="center", va="center")

    # -- legends ---------------------------------------------------------

    def list_legend_layout(self, items, width):
        """Rows of (x, name, color, style) for a bottom list legend."""
        rows, row, x = [], [], 0.0
        for name, color, style in items:
            wd = 18 + self.cv.width(name, LEGEND_PT) + 16
            if row and x + wd > width:
                rows.append(row)
                row, x = [], 0.0
            row.append((x, name, color, style))
            x += wd
        if row:
            rows.append(row)
        return rows

    def draw_swatch(self, x, y, color, style):
        ax_y = 1 - y / self.cv.H
        ls = style.get("ls", "-")
        self.cv.fig.add_artist(Line2D(
            [x / self.cv.W, (x + 14) / self.cv.W], [ax_y, ax_y], color=color, linewidth=3 if ls == "-" else 2,
            linestyle=ls, solid_capstyle="round", transform=self.cv.fig.transFigure))

    def legend(self, items, top, width, max_h, table=None):
        """Draw the legend under the plot; return the px height it uses."""
        lh = 15
        if table is not None:
            head, rows = table
            n = min(len(items), max(1, int(max_h // lh) - 1))
            colw = 70
            namew = width - colw * len(head)
            y = top
            for j, hname in enumerate(head):
                self.cv.text(self.x + self.PAD + namew + colw * (j + 1), y + lh / 2, hname, fontsize=LEGEND_PT,
                             color="#6e9fff", ha="right", va="center")
            for i in range(n):
                name, color, style = items[i]
                y = top + lh * (i + 1)
                self.draw_swatch(self.x + self.PAD, y + lh / 2, color, style)
                self.cv.text(self.x + self.PAD + 20, y + lh / 2, self.cv.fit(name, LEGEND_PT, namew - 24),
                             fontsize=LEGEND_PT, va="center")
                for j, val in enumerate(rows[i]):
                    self.cv.text(self.x + self.PAD + namew + colw * (j + 1), y + lh / 2, val, fontsize=LEGEND_PT,
                                 ha="right", va="center")
            return lh * (n + 1)
        rows = self.list_legend_layout(items, width)
        n = min(len(rows), max(1, int(max_h // lh)))
        for r, row in enumerate(rows[:n]):
            y = top + lh * r + lh / 2
            for x, name, color, style in row:
                self.draw_swatch(self.x + self.PAD + x, y, color, style)
                self.cv.text(self.x + self.PAD + x + 18, y, name, fontsize=LEGEND_PT, va="center")
        return lh * n

    def legend_height(self, items, width, table):
        lh = 15
        cap = max(lh, (self.h - self.TITLE_H) * 0.45)
        if table:
            return min(lh * (len(items) + 1), cap)
        rows = self.list_legend_layout(items, width)
        return min(lh * len(rows), cap)


def dates(ctx):
    n = int(round((ctx.end - ctx.start) / ctx.step)) + 1
    ts = ctx.start + ctx.step * np.arange(n)
    return np.array([mdates.date2num(dt.datetime.fromtimestamp(t)) for t in ts]), ts


def time_axis(ax, ctx, x0, x1):
    ax.set_xlim(x0, x1)
    span = ctx.end - ctx.start
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if span <= 600 else "%H:%M" if span <= 2 * 86400 else "%m/%d %H:%M"))


def x_ticks(ax, x0, x1, width_px):
    """Time ticks, none so close to the left edge that it meets the lowest y label."""
    loc = mdates.AutoDateLocator(minticks=3, maxticks=max(3, int(width_px // 100)))
    ticks = [t for t in loc.tick_values(mdates.num2date(x0), mdates.num2date(x1))
             if x0 + 0.05 * (x1 - x0) <= t <= x1]
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))


def y_axis(cv, ax, unit, lo, hi, nbins):
    """Set the y range and ticks; return the px width of the widest label."""
    ax.set_ylim(lo, hi)
    ticks, f = axis_ticks(unit, lo, hi, nbins)
    ax.yaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(f))
    return max((cv.width(f(t), TICK_PT) for t in ticks), default=20)


def isolated_points(v):
    fin = np.isfinite(v)
    prev = np.concatenate([[False], fin[:-1]])
    nxt = np.concatenate([fin[1:], [False]])
    return fin & ~prev & ~nxt


def draw_timeseries(pn, series):
    cv, ctx, panel = pn.cv, pn.ctx, pn.p
    fc = fieldconfig(panel)
    custom = fc.get("custom") or {}
    unit = fc.get("unit") or "short"
    stacking = ((custom.get("stacking") or {}).get("mode") or "none") != "none"
    fill = float(custom.get("fillOpacity", 10) or 0) / 100
    lw_default = float(custom.get("lineWidth", 1) or 1)
    opts = panel.get("options") or {}
    lg = opts.get("legend") or {}
    show_legend = lg.get("showLegend", True) and lg.get("displayMode") != "hidden"
    x, _ts = dates(ctx)

    items, styles = [], []
    for i, s in enumerate(series):
        ov = overrides_for(panel, s["name"])
        color = series_color(panel, s["name"], i)
        ls = "-"
        dash = ov.get("custom.lineStyle")
        if isinstance(dash, dict) and dash.get("fill") in ("dash", "dot"):
            ls = (0, tuple(max(1, d / 3) for d in dash.get("dash", [10, 10]))) if dash.get("fill") == "dash" else ":"
        lw = float(ov.get("custom.lineWidth", lw_default))
        fo = float(ov.get("custom.fillOpacity", fill * 100)) / 100
        styles.append({"color": color, "ls": ls, "lw": lw, "fill": fo})
        items.append((s["name"], color, {"ls": "--" if ls != "-" else "-"}))

    # Values, stacked if asked.
    ys, bases = [], []
    base = np.zeros_like(x)
    for s in series:
        v = np.asarray(s["v"], dtype=float)
        v = np.where(np.isfinite(v), v, np.nan)
        if stacking:
            bases.append(base.copy())
            y = np.where(np.isfinite(v), base + np.nan_to_num(v), np.nan)
            base = base + np.nan_to_num(v)
        else:
            bases.append(None)
            y = v
        ys.append(y)

    finite = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    dmin = float(finite.min()) if finite.size else 0.0
    dmax = float(finite.max()) if finite.size else 1.0
    lo = fc.get("min")
    hi = fc.get("max")
    if lo is None and hi is None and dmax - dmin <= 1e-9 * max(abs(dmax), 1e-300):
        # A flat line: show it against zero.
        if dmax > 0:
            dmin = 0.0
        elif dmax < 0:
            dmax = 0.0
    lo = float(lo) if lo is not None else (min(0.0, dmin) if stacking or fill > 0 and dmin >= 0 and dmin < dmax * 0.5 else dmin)
    if hi is None:
        top = max(dmax, lo)
        if top > lo:
            # Round the soft maximum up to a nice tick, as Grafana does.
            top = top + (top - lo) * 0.03
            ticks, _f = axis_ticks(unit, lo, top * 2 - lo, 8)
            hi = min([t for t in ticks if t >= top] or [top])
        else:
            hi = lo + 1.0
    hi = float(hi)
    if hi <= lo:
        hi = lo + 1.0
    if fc.get("min") is None and lo != 0.0 and lo == dmin:
        lo = dmin - (hi - dmin) * 0.05

    table = lg.get("displayMode") == "table"
    calcs = lg.get("calcs") or []
    plot_w = pn.w - 2 * pn.PAD
    leg_h = pn.legend_height(items, plot_w, table and calcs) if show_legend and items else 0
    xt_h = 18
    top = pn.y + pn.TITLE_H
    bottom_pad = 6
    plot_h = pn.h - pn.TITLE_H - xt_h - leg_h - bottom_pad - (4 if leg_h else 0)

    ax = cv.axes(pn.x + pn.PAD, top, plot_w, plot_h)
    style_axes(ax)
    nb = max(2, min(6, int(plot_h // 28)))
    ywidth = y_axis(cv, ax, unit, lo, hi, nb)
    ax.set_position(cv.rect(pn.x + pn.PAD + ywidth + 8, top, plot_w - ywidth - 14, plot_h))
    time_axis(ax, ctx, x[0], x[-1])
    x_ticks(ax, x[0], x[-1], plot_w - ywidth)

    fill_to = lo if lo > 0 or hi < 0 else 0.0
    for i, (s, y, st) in enumerate(zip(series, ys, styles)):
        z = 3 + len(series) - i if stacking else 3 + i
        ax.plot(x, y, color=st["color"], linewidth=st["lw"], linestyle=st["ls"], zorder=z, solid_joinstyle="round")
        iso = isolated_points(y)
        if iso.any():
            ax.plot(x[iso], y[iso], "o", color=st["color"], markersize=2.5, zorder=z)
        if st["fill"] > 0:
            b = bases[i] if stacking else np.full_like(x, fill_to)
            ok = np.isfinite(y)
            ax.fill_between(x, b, np.where(ok, y, b), where=ok, color=st["color"], alpha=st["fill"], linewidth=0, zorder=z - 0.5)
    ax.set_ylim(lo, hi)
    ax.set_xlim(x[0], x[-1])

    if leg_h:
        rows = None
        head = []
        if table and calcs:
            names = {"mean": "Mean", "max": "Max", "min": "Min", "lastNotNull": "Last *", "last": "Last",
                     "sum": "Total", "firstNotNull": "First *", "first": "First"}
            head = [names.get(c, c) for c in calcs]
            rows = []
            for s in series:
                v = np.asarray(s["v"], dtype=float)
                f = v[np.isfinite(v)]
                out = []
                for c in calcs:
                    if f.size == 0:
                        val = math.nan
                    elif c == "mean":
                        val = float(f.mean())
                    elif c == "max":
                        val = float(f.max())
                    elif c == "min":
                        val = float(f.min())
                    elif c == "sum":
                        val = float(f.sum())
                    elif c in ("first", "firstNotNull"):
                        val = float(f[0])
                    else:
                        val = float(f[-1])
                    out.append(fmt_value(val, unit, fc.get("decimals")) if math.isfinite(val) else "-")
                rows.append(out)
        pn.legend(items, top + plot_h + xt_h + 4, plot_w, leg_h, (head, rows) if rows is not None else None)


def draw_stat(pn, series):
    cv, panel = pn.cv, pn.p
    fc = fieldconfig(panel)
    vals = [float(np.asarray(s["v"], dtype=float).ravel()[-1]) for s in series]
    vals = [v for v in vals if math.isfinite(v)]
    if not vals:
        pn.no_data()
        return
    v = sum(vals)
    s = fmt_value(v, fc.get("unit") or "short", fc.get("decimals"))
    color = threshold_color(panel, v)
    avail_h = pn.h - pn.TITLE_H - 6
    avail_w = pn.w - 2 * pn.PAD
    size = avail_h * 0.55 * 72 / DPI
    while size > 8 and cv.width(s, size, "semibold") > avail_w:
        size -= 1
    cv.text(pn.x + pn.w / 2, pn.y + pn.TITLE_H + avail_h / 2, s, fontsize=size, weight="semibold",
            color=color, ha="center", va="center")


def draw_heatmap(pn, series):
    cv, ctx, panel = pn.cv, pn.ctx, pn.p
    opts = panel.get("options") or {}
    series = [s for s in series if "le" in s["labels"]] or series
    # One row per le (summing series that share one le).
    rows = {}
    for s in series:
        le = s["labels"].get("le", s["name"])
        v = np.asarray(s["v"], dtype=float)
        rows[le] = np.nansum(np.vstack([rows[le], v]), axis=0) if le in rows else v
    les = sorted(rows, key=le_key)
    m = np.vstack([rows[le] for le in les])
    fv = (opts.get("filterValues") or {}).get("le")
    hide = m <= (fv if fv is not None else 1e-9)
    data = np.ma.masked_where(~np.isfinite(m) | hide, m)
    x, _ = dates(ctx)
    dx = (x[1] - x[0]) if len(x) > 1 else 1 / 86400

    ya = opts.get("yAxis") or {}
    ylabel = ya.get("axisLabel") or ""
    ydec = ya.get("decimals")
    labels = []
    for le in les:
        if le_key(le) == math.inf:
            labels.append("+Inf")
        elif ydec is not None:
            labels.append(f"{float(le):.{ydec}f}")
        else:
            labels.append(str(le))

    plot_w = pn.w - 2 * pn.PAD
    leg_h = 26 if (opts.get("legend") or {}).get("show", True) else 0
    xt_h = 18
    top = pn.y + pn.TITLE_H
    plot_h = pn.h - pn.TITLE_H - xt_h - leg_h - 6
    lab_w = max(cv.width(s, TICK_PT) for s in labels) + (16 if ylabel else 0)
    ax = cv.axes(pn.x + pn.PAD + lab_w + 8, top, plot_w - lab_w - 14, plot_h)
    style_axes(ax)
    ax.grid(False)
    cm = opts.get("color") or {}
    scheme = cm.get("scheme") or "Oranges"
    try:
        cmap = plt.get_cmap(scheme if cm.get("reverse") else scheme + "_r").copy()
    except ValueError:
        cmap = plt.get_cmap("Oranges_r").copy()
    if cm.get("mode") == "opacity":
        base = color_of(cm.get("fill"), NAMED["dark-orange"])
        cmap = mcolors.LinearSegmentedColormap.from_list("op", [mcolors.to_rgba(base, 0.1), mcolors.to_rgba(base, 1)])
    cmap.set_bad(alpha=0)
    vmax = float(data.max()) if data.count() else 1.0
    vmin = float(data.min()) if data.count() else 0.0
    if vmax - vmin <= 0.01 * abs(vmax):
        vmin = 0.0
    if vmax <= vmin:
        vmax = vmin + 1.0
    if cm.get("scale") == "exponential":
        norm = mcolors.PowerNorm(gamma=float(cm.get("exponent", 0.5)), vmin=vmin, vmax=vmax)
    else:
        norm = mcolors.Normalize(vmin=vmin, vmax=vmax)
    nb = len(les)
    # Normalise in float64 here: imshow resamples in float32.
    ax.imshow(np.ma.masked_where(np.ma.getmaskarray(data), norm(data.filled(vmin))), aspect="auto", origin="lower",
              interpolation="nearest", cmap=cmap, vmin=0.0, vmax=1.0,
              extent=[x[0] - dx / 2, x[-1] + dx / 2, 0, nb])
    gap = float(opts.get("cellGap", 1) or 0)
    if gap > 0:
        ax.hlines(np.arange(1, nb), x[0] - dx / 2, x[-1] + dx / 2, color=PANEL_BG, linewidth=gap * 0.6)
    time_axis(ax, ctx, x[0] - dx / 2, x[-1] + dx / 2)
    x_ticks(ax, x[0] - dx / 2, x[-1] + dx / 2, plot_w - lab_w)
    # y ticks: the le upper bounds, on each row's top edge, thinned to fit.
    every = max(1, int(math.ceil(nb * 12 / max(plot_h, 1))))
    idx = [i for i in range(nb) if (nb - 1 - i) % every == 0]
    ax.set_yticks([i + 1 for i in idx])
    ax.set_yticklabels([labels[i] for i in idx])
    ax.set_ylim(0, nb)
    if ylabel:
        ax.set_ylabel(ylabel, color=TEXT_DIM, fontsize=TICK_PT, labelpad=2)
    if leg_h:
        cw = min(260, plot_w * 0.3)
        cax = cv.axes(pn.x + pn.PAD + lab_w + 8 + 40, top + plot_h + xt_h + 8, cw, 8)
        grad = np.asarray(norm(np.linspace(vmin, vmax, 256)))[None, :]
        cax.imshow(grad, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, extent=[0, 1, 0, 1], interpolation="bilinear")
        cax.set_xticks([])
        cax.set_yticks([])
        for sp in cax.spines.values():
            sp.set_visible(False)
        unit = (opts.get("cellValues") or {}).get("unit") or "short"
        dec = (opts.get("cellValues") or {}).get("decimals")
        yy = top + plot_h + xt_h + 12
        cv.text(pn.x + pn.PAD + lab_w + 8 + 34, yy, fmt_value(vmin, unit, dec), fontsize=LEGEND_PT, ha="right", va="center")
        cv.text(pn.x + pn.PAD + lab_w + 8 + 46 + cw, yy, fmt_value(vmax, unit, dec), fontsize=LEGEND_PT, ha="left", va="center")
        rv = (opts.get("rowsFrame") or {}).get("value")
        if rv:
            cv.text(pn.x + pn.PAD + lab_w + 8 + 60 + cw + cv.width(fmt_value(vmax, unit, dec), LEGEND_PT), yy, rv,
                    fontsize=LEGEND_PT, color=TEXT_DIM, ha="left", va="center")


def last_value(v):
    v = np.asarray(v, dtype=float).ravel()
    f = v[np.isfinite(v)]
    return float(f[-1]) if f.size else math.nan


def draw_bars(pn, series):
    cv, panel = pn.cv, pn.p
    fc = fieldconfig(panel)
    opts = panel.get("options") or {}
    unit = fc.get("unit") or "short"
    dec = fc.get("decimals")
    bars = [(s["name"], last_value(s["v"]), s) for s in series]
    bars = [b for b in bars if math.isfinite(b[1])]
    if not bars:
        pn.no_data()
        return
    if all("le" in b[2]["labels"] for b in bars):
        bars.sort(key=lambda b: le_key(b[2]["labels"]["le"]))
    vals = np.array([b[1] for b in bars])
    lo = float(fc.get("min", min(0.0, vals.min())))
    hi = float(fc.get("max", vals.max()))
    if hi <= lo:
        hi = lo + 1.0
    colors = []
    for i, (name, v, _s) in enumerate(bars):
        if (fc.get("color") or {}).get("mode") in ("palette-classic", "palette-classic-by-name"):
            colors.append(series_color(panel, name, i))
        else:
            ov = overrides_for(panel, name).get("color")
            colors.append(color_of(ov.get("fixedColor")) if isinstance(ov, dict) and ov.get("fixedColor") else threshold_color(panel, v))
    texts = [fmt_value(v, unit, dec) for _n, v, _s in bars]
    names = [b[0] for b in bars]
    vertical = opts.get("orientation") == "vertical"
    unfilled = opts.get("showUnfilled", True)
    area_x = pn.x + pn.PAD
    area_y = pn.y + pn.TITLE_H
    area_w = pn.w - 2 * pn.PAD
    area_h = pn.h - pn.TITLE_H - 6
    n = len(bars)
    ax = cv.axes(area_x, area_y, area_w, area_h)
    ax.set_axis_off()
    ax.set_xlim(0, area_w)
    ax.set_ylim(area_h, 0)  # px, y down
    frac = (vals - lo) / (hi - lo)
    frac = np.clip(frac, 0, 1)
    if vertical:
        slot = area_w / n
        bw = max(1.0, slot * 0.72)
        val_pt = min(LEGEND_PT, max(5.0, slot * 0.9 * 72 / DPI / max(1, max(len(t) for t in texts)) * 1.6))
        name_pt = min(LEGEND_PT, max(5.0, slot * 0.9 * 72 / DPI / max(1, max(len(t) for t in names)) * 1.6))
        top_pad = val_pt * DPI / 72 + 6
        bot_pad = name_pt * DPI / 72 + 8
        full = area_h - top_pad - bot_pad
        for i in range(n):
            cx = slot * i + slot / 2
            if unfilled:
                ax.add_patch(Rectangle((cx - bw / 2, top_pad), bw, full, color="#ffffff", alpha=0.06, linewidth=0))
            hpx = full * frac[i]
            ax.add_patch(Rectangle((cx - bw / 2, top_pad + full - hpx), bw, hpx, color=colors[i], linewidth=0))
            ax.text(cx, top_pad - 3, texts[i], color=colors[i], fontsize=val_pt, ha="center", va="bottom")
            ax.text(cx, area_h - 2, names[i], color=TEXT, fontsize=name_pt, ha="center", va="bottom")
    else:
        slot = area_h / n
        name_pt = min(LEGEND_PT + 1, max(5.0, slot * 0.55 * 72 / DPI))
        name_w = min(area_w * 0.35, max(cv.width(t, name_pt) for t in names) + 10)
        val_w = max(cv.width(t, name_pt) for t in texts) + 10
        full = area_w - name_w - val_w
        bh = max(1.0, slot * 0.7)
        for i in range(n):
            cy = slot * i + slot / 2
            if unfilled:
                ax.add_patch(Rectangle((name_w, cy - bh / 2), full, bh, color="#ffffff", alpha=0.06, linewidth=0))
            ax.add_patch(Rectangle((name_w, cy - bh / 2), full * frac[i], bh, color=colors[i], linewidth=0))
            ax.text(0, cy, cv.fit(names[i], name_pt, name_w - 10), color=TEXT, fontsize=name_pt, ha="left", va="center")
            ax.text(area_w, cy, texts[i], color=colors[i], fontsize=name_pt, ha="right", va="center", weight="semibold")


INLINE = re.compile(r"(\*\*.+?\*\*|`[^`]+`|(?<![\w*])\*[^*\s][^*]*?\*(?![\w*]))")


def markdown_paragraphs(md):
    """Markdown -> paragraphs of (text, style) runs, style in "", "b", "i", "code" (lightly)."""
    md = re.sub(r"```\w*\n?(.*?)```", lambda m: m.group(1), md, flags=re.S)
    md = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", md)
    md = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", md)
    md = re.sub(r"</?(?:br|p|div|span|b|i|em|strong|a|img|h[1-6]|ul|ol|li|hr|pre|code|table|tr|td|th)\b[^<>]*>", "", md,
                flags=re.I)
    paras = []
    for block in re.split(r"\n\s*\n", md):
        cur = None
        for line in block.splitlines():
            heading = re.match(r"^\s{0,3}#{1,6}\s+", line)
            bullet = re.match(r"^\s*([-*+]|\d+\.)\s+", line)
            if heading or bullet or cur is None:
                cur = {"text": "", "bold": bool(heading), "bullet": bool(bullet)}
                paras.append(cur)
                line = line[(heading or bullet).end():] if (heading or bullet) else line
            cur["text"] += (" " if cur["text"] else "") + line.strip()
        if paras:
            paras.append(None)  # paragraph break
    out = []
    for p in paras:
        if p is None:
            out.append(None)
            continue
        runs = []
        text = ("• " if p["bullet"] else "") + p["text"]
        for part in INLINE.split(text):
            if not part:
                continue
            if part.startswith("**") and part.endswith("**") and len(part) > 4:
                runs.append((part[2:-2], "b"))
            elif part.startswith("`") and part.endswith("`") and len(part) > 2:
                runs.append((part[1:-1], "code"))
            elif part.startswith("*") and part.endswith("*") and len(part) > 2:
                runs.append((part[1:-1], "i"))
            else:
                runs.append((part.replace("__", ""), "b" if p["bold"] else ""))
        out.append(runs)
    while out and out[-1] is None:
        out.pop()
    return out


TEXT_STYLES = {
    "": ({}, TEXT),
    "b": ({"weight": "bold"}, "#e6e6f0"),
    "i": ({"style": "italic"}, TEXT),
    "code": ({"family": "monospace"}, "#e8b97a"),
}


def draw_text(pn):
    """A text panel: its markdown as wrapped text, bold/italic/code kept."""
    cv, panel = pn.cv, pn.p
    content = (panel.get("options") or {}).get("content") or panel.get("content") or ""
    paras = markdown_paragraphs(pn.ctx.title(content))
    avail_w = pn.w - 2 * pn.PAD - 8
    avail_h = pn.h - pn.TITLE_H - 8

    def width(t, style, size):
        key = (t, style, size)
        if key not in cv._widths:
            prop = FontProperties(size=size, **TEXT_STYLES[style][0])
            cv._widths[key] = cv.renderer.get_text_width_height_descent(t, prop, ismath=False)[0]
        return cv._widths[key]

    def layout(size):
        def space(st):
            return width("a a", st, size) - width("aa", st, size)

        lines = []
        for runs in paras:
            if runs is None:
                lines.append([])
                continue
            # words: pieces glued without whitespace between them
            words, glue = [], False
            for text, style in runs:
                parts = re.split(r"(\s+)", text)
                for part in parts:
                    if not part:
                        continue
                    if part.isspace():
                        glue = False
                        continue
                    if glue and words:
                        words[-1].append((part, style))
                    else:
                        words.append([(part, style)])
                    glue = True
            line, x = [], 0.0
            for word in words:
                ww = sum(width(t, st, size) for t, st in word)
                gap = min(space(word[0][1]), space(line[-1][2])) if line else 0.0
                if line and x + gap + ww > avail_w:
                    lines.append(line)
                    line, x = [], 0.0
                if line:
                    x += gap
                for t, st in word:
                    line.append((x, t, st))
                    x += width(t, st, size)
            if line:
                lines.append(line)
        return lines

    size = 10.0
    while True:
        lines = layout(size)
        lh = size * DPI / 72 * 1.45
        height = sum(lh if ln else lh * 0.6 for ln in lines)
        if height <= avail_h or size <= 6:
            break
        size -= 0.25
    y = pn.y + pn.TITLE_H + 4
    for line in lines:
        if not line:
            y += lh * 0.6
            continue
        if y + lh > pn.y + pn.h:
            break
        # one text per run of one style
        runs = []
        for x, t, st in line:
            if runs and runs[-1][2] == st:
                runs[-1][1].append(t)
            else:
                runs.append([x, [t], st])
        for x, words, st in runs:
            kw, color = TEXT_STYLES[st]
            cv.text(pn.x + pn.PAD + 4 + x, y, " ".join(words), fontsize=size, va="top", ha="left", color=color, **kw)
        y += lh


def draw_row(cv, panel, ctx):
    gp = panel.get("gridPos") or {}
    y = HEADER_PX + gp.get("y", 0) * ROW_PX + ROW_PX / 2
    x = gp.get("x", 0) * COL_PX + GAP_PX
    mark = "▸ " if panel.get("collapsed") else "▾ "
    cv.text(x + 2, y, mark + ctx.title(panel.get("title", "")), fontsize=11, weight="semibold", va="center", ha="left")


# ------------------------------------------------------------------- main


def render(dash, ctx, out):
    panels = dash.get("panels") or []
    bottom = max([(p.get("gridPos") or {}).get("y", 0) + (p.get("gridPos") or {}).get("h", 8) for p in panels] or [8])
    cv = Canvas(HEADER_PX + bottom * ROW_PX + 8)
    title = dash.get("title") or "dashboard"
    cv.text(12, HEADER_PX / 2, title, fontsize=15, weight="semibold", va="center", ha="left")
    var_txt = "   ".join(f"{k} = {'All' if v in ('.*', '.+') else v}" for k, v in ctx.vars.items())
    rng = ctx.range_s
    rng_txt = f"Last {rng // 3600} h" if rng % 3600 == 0 else f"Last {rng // 60} m" if rng % 60 == 0 else f"Last {rng} s"
    when = dt.datetime.fromtimestamp(ctx.end).strftime("%Y-%m-%d %H:%M:%S")
    cv.text(12 + cv.width(title, 15, "semibold") + 30, HEADER_PX / 2, var_txt, fontsize=9, color=TEXT_DIM, va="center")
    cv.text(WIDTH_PX - 12, HEADER_PX / 2, f"{rng_txt} (to {when}, step {ctx.step}s)", fontsize=9, color=TEXT_DIM,
            va="center", ha="right")

    count, drawn, empty = 0, 0, []
    for panel in panels:
        kind = panel.get("type")
        if kind == "row":
            draw_row(cv, panel, ctx)
            continue
        count += 1
        pn = Panel(cv, panel, ctx)
        pn.frame()
        if kind == "text":
            draw_text(pn)
            drawn += 1
            continue
        series = fetch(panel, ctx)
        ok = has_finite(series)
        if ok:
            drawn += 1
        else:
            empty.append(panel.get("title", ""))
        if kind in ("stat", "gauge"):
            draw_stat(pn, series)
        elif kind in ("bargauge", "barchart"):
            draw_bars(pn, series)
        elif kind == "heatmap":
            if ok:
                draw_heatmap(pn, series)
            else:
                pn.no_data()
        else:
            if ok:
                draw_timeseries(pn, series)
            else:
                pn.no_data()
    cv.fig.savefig(out, dpi=DPI, facecolor=BG)
    plt.close(cv.fig)
    return {"dashboard": title, "panels": count, "drawn": drawn, "empty": empty, "out": str(out)}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render a Grafana dashboard JSON to a PNG from Prometheus.")
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", required=True, help="Grafana dashboard JSON file")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--range-seconds", type=int, default=900, help="time range ending now (default 900)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="template variable value (regex); default .* for every variable")
    a = ap.parse_args(argv)
    if a.range_seconds < 1:
        ap.error("--range-seconds must be at least 1")
    try:
        with open(a.dashboard, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"render.py: cannot read dashboard {a.dashboard}: {e}", file=sys.stderr)
        return 2
    if isinstance(dash, dict) and isinstance(dash.get("dashboard"), dict):
        dash = dash["dashboard"]  # API export wrapper
    variables = {"tenant": ".*", "result": ".*"}
    for v in ((dash.get("templating") or {}).get("list")) or []:
        if v.get("name"):
            variables.setdefault(v["name"], ".*")
    for kv in a.var:
        if "=" not in kv:
            ap.error(f"--var wants NAME=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        variables[k.strip()] = v
    ctx = Context(Prometheus(a.prometheus), a.range_seconds, variables)
    try:
        summary = render(dash, ctx, a.out)
    except Fail as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
