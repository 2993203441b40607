"""Figures of a report: matplotlib objects (no pyplot state) in a fixed seaborn style, saved as
PNG bytes without metadata, so the same data give the same bytes. Every series differs by marker,
line style or hatch as well as colour, so a figure reads in black and white."""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))
HATCHES = ("", "///", "...", "xxx", "\\\\\\", "+++", "ooo", "---", "|||", "***")
DPI = 100


@dataclass(frozen=True)
class Style:
    color: tuple
    marker: str
    linestyle: object
    hatch: str


def styles(names: Sequence[str]) -> dict[str, Style]:
    """One distinct style per name, in order (a model keeps its style in every figure)."""
    import seaborn as sns

    colors = sns.color_palette("colorblind", 10)
    return {n: Style(tuple(colors[i % 10]), MARKERS[i % len(MARKERS)],
                     LINESTYLES[i % len(LINESTYLES)], HATCHES[i % len(HATCHES)])
            for i, n in enumerate(names)}


@contextmanager
def _style():
    import matplotlib as mpl
    import seaborn as sns

    rc = {**mpl.rcParamsDefault, **sns.axes_style("whitegrid"),
          **sns.plotting_context("notebook", font_scale=0.85),
          "font.family": "DejaVu Sans", "svg.hashsalt": "bench-report", "figure.dpi": DPI,
          "savefig.dpi": DPI, "axes.edgecolor": "0.3", "hatch.linewidth": 0.8,
          "errorbar.capsize": 3, "legend.frameon": False}
    rc.pop("backend", None)
    with mpl.rc_context(rc):
        yield


def _grid(n: int, width: float = 4.4, height: float = 3.2, cols: int = 3):
    import math

    from matplotlib.figure import Figure

    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _ticks(ax, points: list) -> None:
    """One labelled row per point, top to bottom; few x ticks, so long numbers never overlap."""
    from matplotlib.ticker import MaxNLocator

    ax.set_yticks(range(len(points)), [p[0] for p in points])
    ax.set_ylim(len(points) - 0.5, -0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))


def _legend(fig, axes, ncol: int) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, 6))


@dataclass
class Series:
    """One line or point set of a panel: ``kind`` is line, points or step."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    yerr: Sequence[float] | None = None
    kind: str = "line"  # line, points, step, or reference (a thin grey dashed level: chance)
    style: Style | None = None


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)


def dot_plot(panels: list[tuple[str, list[tuple[str, float, float]]]], xlabel: str,
             model_styles: dict[str, Style]) -> bytes:
    """Per panel, one row per model: mean with its CI as error bar."""
    with _style():
        fig, axes = _grid(len(panels), height=max(2.2, 0.9 + 0.42 * max(len(p[1])
                                                                        for p in panels)))
        for ax, (title, points) in zip(axes, panels):
            for y, (model, mean, ci) in enumerate(points):
                s = model_styles[model]
                ax.errorbar([mean], [y], xerr=[ci], fmt=s.marker, color=s.color, ms=7)
            _ticks(ax, points)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
        return _png(fig)


def forest_plot(panels: list[tuple[str, list[tuple[str, float, float, float, bool]]]],
                xlabel: str, model_styles: dict[str, Style]) -> bytes:
    """Mean differences with their CI; filled marker = significant after correction."""
    with _style():
        fig, axes = _grid(len(panels), height=max(2.2, 0.9 + 0.42 * max(len(p[1])
                                                                        for p in panels)))
        for ax, (title, points) in zip(axes, panels):
            ax.axvline(0, color="0.2", lw=1)
            for y, (model, diff, low, high, sig) in enumerate(points):
                s = model_styles[model]
                ax.errorbar([diff], [y], xerr=[[diff - low], [high - diff]], fmt=s.marker,
                            color=s.color, ms=7, mfc=s.color if sig else "white")
            _ticks(ax, points)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
        return _png(fig)


def line_panels(panels: list[Panel], xlabel: str, ylabel: str, shared_legend: bool,
                integer_x: bool = False, cols: int = 3) -> bytes:
    """Small multiples of lines, points or steps (robustness, diagnostics, sweep histories)."""
    from matplotlib.ticker import MaxNLocator

    fallback = styles(list(dict.fromkeys(s.label for p in panels for s in p.series
                                         if s.kind != "reference")))
    with _style():
        fig, axes = _grid(len(panels), cols=cols)
        for ax, panel in zip(axes, panels):
            for s in panel.series:
                if s.kind == "reference":
                    ax.step(s.x, s.y, where="post", color="0.35", ls=(0, (4, 2)), lw=1.1,
                            label=s.label)
                    continue
                st = s.style or fallback[s.label]
                if s.kind == "points":
                    ax.plot(s.x, s.y, st.marker, color=st.color, ms=4, alpha=0.8,
                            mfc="white", label=s.label)
                elif s.kind == "step":
                    ax.step(s.x, s.y, where="post", color=st.color, ls=st.linestyle,
                            label=s.label)
                else:
                    ax.errorbar(s.x, s.y, yerr=s.yerr, color=st.color, ls=st.linestyle,
                                marker=st.marker, ms=5, label=s.label)
            ax.set_title(panel.title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if integer_x:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                xs = {x for s in panel.series for x in s.x}
                if len(xs) == 1:  # one epoch: a unit-wide axis, not matplotlib's +-0.05
                    ax.set_xlim(min(xs) - 1, min(xs) + 1)
            if not shared_legend and panel.series:
                ax.legend(fontsize="small")
        if shared_legend:
            _legend(fig, axes, len(fallback))
        return _png(fig)


def heatmap(panels: list[tuple[str, list[str], list[str], list[list[float]], list[list[str]]]],
            cbar_label: str, diverging: bool = False) -> bytes:
    """Per panel, a rows x columns grid coloured by value and annotated with each cell's text
    (NaN cells blank). ``diverging``: a red-blue scale centred on 0 (differences), else a
    sequential colour-blind-safe scale (viridis)."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    with _style():
        n_cols = max(len(p[2]) for p in panels)
        n_rows = max(len(p[1]) for p in panels)
        fig, axes = _grid(len(panels), width=max(5.0, 0.95 * n_cols + 2.6),
                          height=max(2.6, 0.42 * n_rows + 1.8), cols=1)
        for ax, (title, rows, cols, values, notes) in zip(axes, panels):
            v = np.array(values, dtype=float)
            finite = v[np.isfinite(v)]
            if diverging:
                bound = float(np.abs(finite).max()) if finite.size and finite.any() else 1.0
                norm, cmap = TwoSlopeNorm(0.0, -bound, bound), "RdBu_r"
            else:
                norm, cmap = None, "viridis"
            image = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, norm=norm, aspect="auto")
            ax.grid(False)
            ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right")
            ax.set_yticks(range(len(rows)), rows)
            lo, hi = image.get_clim()
            for i in range(len(rows)):
                for j in range(len(cols)):
                    if not notes[i][j]:
                        continue
                    level = (v[i, j] - lo) / (hi - lo) if hi > lo and np.isfinite(v[i, j]) else 0
                    dark = abs(level - 0.5) > 0.3 if diverging else level < 0.6
                    ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=7.5,
                            color="white" if dark else "black")
            ax.set_title(title)
            fig.colorbar(image, ax=ax, label=cbar_label, shrink=0.8)
        return _png(fig)


def contribution_chart(panels: list[tuple[str, list[str], dict[str, list]]], xlabel: str
                       ) -> bytes:
    """Per panel, one row per model and one marker per modality: the signed contribution (a
    share, drawn in percent) with its CI as a horizontal error bar (``(value, low, high,
    filled)``, low/high None without an interval, or None when not measured; ``filled`` False
    draws a hollow marker: no effect established), and a vertical line at 0 (no contribution;
    left of it, removing the modality raises accuracy). Values are drawn as given, never
    clamped."""
    from matplotlib.ticker import PercentFormatter

    modalities = list(dict.fromkeys(m for p in panels for m in p[2]))
    style = styles(modalities)
    with _style():
        n_rows = max(len(p[1]) for p in panels)
        fig, axes = _grid(len(panels), width=7.0, height=max(2.4, 0.5 * n_rows + 1.4), cols=1)
        for ax, (title, models, values) in zip(axes, panels):
            ax.axvline(0, color="0.2", lw=1)
            offsets = {m: (i - (len(values) - 1) / 2) * 0.22 for i, m in enumerate(values)}
            for m, points in values.items():
                s = style[m]
                # the legend's marker: filled, whatever the first point is
                ax.plot([], [], ls="", marker=s.marker, color=s.color, ms=7, label=m)
                for y, p in enumerate(points):
                    if p is None:
                        continue
                    value, low, high, filled = p
                    err = None if low is None else [[value - low], [high - value]]
                    ax.errorbar([value], [y + offsets[m]], xerr=err, fmt=s.marker, color=s.color,
                                ms=7, mfc=s.color if filled else "white")
            ax.set_yticks(range(len(models)), models)
            ax.set_ylim(len(models) - 0.5, -0.5)
            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
            ax.set_title(title)
            ax.set_xlabel(xlabel)
        _legend(fig, axes, len(modalities))
        return _png(fig)
