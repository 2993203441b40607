"""Build a report from a suite's stored results and write it (HTML, Markdown, LaTeX, figures).

Nothing here trains or evaluates a model: every number comes from the files listed in
:mod:`benchmark.report.results`. Iteration orders come from the stored files (or are sorted), no
clock or path of the output enters the document, and figures are deterministic PNGs, so
rendering the same results twice gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import atomic_write, atomic_write_text
from ..stats import mean_ci
from . import plots
from .document import Card, Cell, Document, Figure, Section, Table, to_html, to_latex, to_markdown
from .results import METRIC_RE, SuiteResults, load_results, metric_k, seed_averaged
from .significance import N_RESAMPLES, Comparison, compare, correct

DEFAULT_REFERENCE = "vlm2rec"
SIGNAL_ORDER = ("visual", "textual", "collaborative", "popularity")
# How to produce each optional input (shown when it is absent).
PRODUCERS = {"robustness": "bench robustness --suite {suite}",
             "diagnostics": "bench diagnose --suite {suite}",
             "sweeps": "bench sweep --suite {suite}"}


@dataclass
class ReportOptions:
    reference: str | None = None  # default: vlm2rec if in the suite, else the first model
    metric: str = "ndcg@10"
    alpha: float = 0.05
    n_resamples: int = N_RESAMPLES
    seed: int = 0
    command: str | None = None  # the command that regenerates the report, shown in it


def render_report(target: str | Path, results_dir: str | Path = "results",
                  out: str | Path = "reports", options: ReportOptions | None = None
                  ) -> dict[str, Path]:
    """Render ``<out>/<suite>/`` (``report.html``, ``report.md``, ``tables.tex``,
    ``figures/*.png``) from stored results; returns the written paths by kind."""
    results = load_results(target, results_dir)
    doc = build_document(results, options or ReportOptions())
    return write_report(doc, Path(out) / results.name)


def write_report(doc: Document, folder: Path) -> dict[str, Path]:
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    written = [atomic_write(figures / f"{fig.name}.png", lambda p, data=fig.png: p.write_bytes(data))
               for fig in doc.figures()]
    for stale in set(figures.glob("*.png")) - set(written):
        stale.unlink()
    paths = {"html": atomic_write_text(folder / "report.html", to_html(doc)),
             "markdown": atomic_write_text(folder / "report.md", to_markdown(doc)),
             "latex": atomic_write_text(folder / "tables.tex", to_latex(doc))}
    for path in [*written, *paths.values()]:
        path.chmod(0o644)  # a report is meant to be read (atomic writes create 0600 files)
    return {**paths, "figures": figures}


def build_document(res: SuiteResults, opts: ReportOptions) -> Document:
    metric = _check_metric(res, opts.metric)
    reference = _reference(res, opts.reference)
    styles = plots.styles(res.models)
    ctx = _Ctx(res, opts, metric, reference, styles)
    sections = [_overview(ctx), _main(ctx), _world_check(ctx), _significance(ctx), _signals(ctx),
                _robustness(ctx), _diagnostics(ctx), _sweeps(ctx), _provenance(ctx)]
    subtitle = (f"Suite `{res.name}`, rendered from stored results only by `bench report`. "
                f"Reference model: `{reference}`; significance metric: {_name(metric)}.")
    return Document(f"Benchmark report: {res.name}", subtitle, sections)


@dataclass
class _Ctx:
    res: SuiteResults
    opts: ReportOptions
    metric: str
    reference: str
    styles: dict[str, plots.Style]


# -- helpers -------------------------------------------------------------------------------------

def _check_metric(res: SuiteResults, metric: str) -> str:
    metric = metric.lower()
    metric_k(metric)
    available = {m for r in res.runs for m in r.row.get("test", {})}
    if metric not in available:
        raise ConfigError(f"metric {metric!r} not in the stored results "
                          f"(available: {', '.join(_metric_order(available))})")
    return metric


def _reference(res: SuiteResults, reference: str | None) -> str:
    if reference is None:
        return DEFAULT_REFERENCE if DEFAULT_REFERENCE in res.models else res.models[0]
    if reference not in res.models:
        raise ConfigError(f"reference model {reference!r} not in suite {res.name!r} "
                          f"(models: {', '.join(res.models)})")
    return reference


def _metric_order(names) -> list[str]:
    kinds = ("hr", "ndcg", "mrr")
    valid = [n for n in names if METRIC_RE.match(n)]
    return sorted(valid, key=lambda n: (kinds.index(n.split("@")[0]), int(n.split("@")[1])))


def _name(metric: str) -> str:
    kind, k = metric.split("@")
    return f"{kind.upper()}@{k}"


def _slug(*parts: object) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def _pm(values: Sequence[float]) -> tuple[float, str]:
    mean, ci = mean_ci(list(values))
    return mean, ("—" if math.isnan(mean) else f"{mean:.4f} ± {ci:.4f}")


def _bold_best(rows: list[list[Cell]], means: list[list[float]], first: int) -> None:
    """Bold the highest mean of each column from ``first`` on (ties at 4 decimals all bold)."""
    for j in range(len(means[0]) if means else 0):
        col = [round(m[j], 4) for m in means if not math.isnan(m[j])]
        if len(col) > 1 and max(col) > min(col):  # when all tie, nothing is best
            for row, m in zip(rows, means):
                row[first + j].bold = round(m[j], 4) == max(col)


def _mean_table(label: str, caption: str, header: list[str], keys: list[str],
                cells: list[list[Sequence[float]]], lead: list[list[str]]) -> Table:
    """Rows ``lead[i] + [mean ± CI of cells[i][j]]`` with the best of each column in bold."""
    rows, means = [], []
    for lead_cells, values in zip(lead, cells):
        pms = [_pm(v) for v in values]
        rows.append([Cell(x) for x in lead_cells] + [Cell(text) for _, text in pms])
        means.append([m for m, _ in pms])
    _bold_best(rows, means, len(lead[0]) if lead else 0)
    return Table(label, caption, header, rows)


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    if p == 0:
        return "< 1e-300"  # below double precision
    return f"{p:.1e}" if p < 1e-4 else f"{p:.4f}"


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _missing(section: str, what: str, ctx: _Ctx) -> str:
    cmd = PRODUCERS[section].format(suite=ctx.res.name)
    return f"Not run for this suite (run `{cmd}`): no {what} was found."


# -- sections ------------------------------------------------------------------------------------

def _overview(ctx: _Ctx) -> Section:
    res = ctx.res
    seeds = sorted({r.seed for r in res.runs})
    card = next((r.result["provenance"] for r in res.runs if r.result), {})
    ev = card.get("config", {}).get("evaluation", {})
    mode = ev.get("mode", "unknown")
    if mode == "sampled":
        mode += f" ({ev.get('n_negatives')} seeded negatives per case; a compatibility mode)"
    split = card.get("split", {})
    blocks: list = [
        (f"{len(res.runs)} completed runs: {len(res.datasets)} dataset(s) "
        f"({', '.join(f'`{d}`' for d in res.datasets)}) × {len(res.models)} model(s) "
        f"({', '.join(f'`{m}`' for m in res.models)}) × seeds {', '.join(map(str, seeds))}."),
        (f"Evaluation: {mode} ranking, split `{split.get('kind', 'unknown')}`; metrics on the "
        "test cases, each touched once after model selection on validation."),
        f"Regenerate this report with `{ctx.opts.command or f'bench report {res.name}'}`."]
    if res.failed:
        blocks.append(f"{len(res.failed)} run(s) did not complete and are left out: "
                      + ", ".join(f"`{r.get('dataset')}/{r.get('model')}/seed-{r.get('seed')}`"
                                  for r in res.failed) + ".")
    return Section("overview", "Overview", blocks)


def _main(ctx: _Ctx) -> Section:
    res = ctx.res
    blocks: list = [("Test metrics: mean ± half-width of the 95% t confidence interval over seeds "
                    "(± 0 with a single seed or a deterministic model). Best mean of each column "
                    "in bold.")]
    panels = []
    for d in res.datasets:
        models = [m for m in res.models if res.runs_of(d, m)]
        metrics = _metric_order({k for m in models for r in res.runs_of(d, m) for k in r.row["test"]})
        cells = [[[r.row["test"][k] for r in res.runs_of(d, m) if k in r.row["test"]]
                  for k in metrics] for m in models]
        lead = [[m, str(len(res.runs_of(d, m)))] for m in models]
        blocks.append(_mean_table(_slug("main", d), f"Test accuracy on {d}",
                                  ["model", "seeds", *map(_name, metrics)], metrics, cells, lead))
        panels.append((d, [(m, *mean_ci([r.row["test"][ctx.metric] for r in res.runs_of(d, m)]))
                           for m in models]))
    blocks.append(Figure("main", plots.dot_plot(panels, _name(ctx.metric), ctx.styles),
                         f"Test {_name(ctx.metric)} per model: mean and 95% CI over seeds."))
    return Section("main", "Main results", blocks)


def comparisons(res: SuiteResults, reference: str, metric: str, n_resamples: int = N_RESAMPLES,
                seed: int = 0) -> tuple[list[Comparison], list[str]]:
    """Every model against the reference on every dataset, Holm-corrected; plus notes on the
    comparisons that could not be made."""
    out, notes = [], []
    for d in res.datasets:
        ref_runs = res.runs_of(d, reference)
        ref = seed_averaged(ref_runs, metric) if ref_runs else None
        if ref is None:
            notes.append(f"`{d}`: no per-case results of `{reference}`: no comparison.")
            continue
        for m in res.models:
            if m == reference or not res.runs_of(d, m):
                continue
            other = seed_averaged(res.runs_of(d, m), metric)
            if other is None:
                notes.append(f"`{d}/{m}`: per_case.npz missing: no comparison.")
                continue
            users = np.intersect1d(ref[0], other[0])
            a = other[1][np.searchsorted(other[0], users)]
            b = ref[1][np.searchsorted(ref[0], users)]
            out.append(compare(d, m, reference, a, b, n_resamples, seed))
    return correct(out), notes


def _significance(ctx: _Ctx) -> Section:
    o, name = ctx.opts, _name(ctx.metric)
    comps, notes = comparisons(ctx.res, ctx.reference, ctx.metric, o.n_resamples, o.seed)
    blocks: list = [
        (f"Each model against `{ctx.reference}`, paired over the test users both evaluated. "
        f"A user's value is their {name} averaged over the model's seeds (so n = users, not "
        "users × seeds, and seed noise does not count as evidence). Two tests: the paired t-test "
        f"and a two-sided sign-flip permutation test ({o.n_resamples:,} resamples, seed "
        f"{o.seed}). Effect size: Δ = mean difference (model − reference) with its 95% "
        f"percentile bootstrap CI over users ({o.n_resamples:,} resamples, seed {o.seed}), and "
        f"Cohen's d_z = Δ / sd of the differences. Holm correction across all {len(comps)} "
        f"comparisons of this report, for each test; a difference is called significant only "
        f"when both corrected p-values are ≤ {o.alpha}."), *notes]
    if not comps:
        blocks.append("Nothing to compare: the suite has a single model.")
        return Section("significance", "Paired significance", blocks)
    rows = []
    for c in comps:
        sig = c.significant(o.alpha)
        verdict = ("better" if c.diff > 0 else "worse") + " (significant)" if sig \
            else "no significant difference"
        rows.append([Cell(c.dataset), Cell(c.model), Cell(str(c.n)), Cell(f"{c.mean_model:.4f}"),
                     Cell(f"{c.mean_reference:.4f}"),
                     Cell(f"{c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"),
                     Cell(f"{c.dz:+.3f}"), Cell(_p(c.p_t)), Cell(_p(c.p_perm)),
                     Cell(_p(c.p_t_holm), c.p_t_holm <= o.alpha),
                     Cell(_p(c.p_perm_holm), c.p_perm_holm <= o.alpha), Cell(verdict, sig)])
    blocks.append(Table("significance", f"Paired comparisons against {ctx.reference} ({name}); "
                        f"corrected p ≤ {o.alpha} in bold",
                        ["dataset", "model", "users", name, f"{name} (ref.)", "Δ [95% CI]", "d_z",
                         "p t-test", "p perm.", "p t-test (Holm)", "p perm. (Holm)", "verdict"],
                        rows))
    panels = [(d, [(c.model, c.diff, c.ci_low, c.ci_high, c.significant(o.alpha))
                   for c in comps if c.dataset == d]) for d in dict.fromkeys(c.dataset
                                                                             for c in comps)]
    blocks.append(Figure("significance", plots.forest_plot(
        panels, f"Δ {name} vs {ctx.reference}", ctx.styles),
        f"Mean per-user difference in {name} against {ctx.reference} with its 95% bootstrap CI; "
        "filled marker: significant after Holm correction (both tests), open: not."))
    return Section("significance", "Paired significance", blocks)


def _world_check(ctx: _Ctx) -> Section:
    """The suite's check of its controlled-modality world (``world_check.json``)."""
    title = "World check"
    checks = ctx.res.world_check
    if not checks:
        return Section("world-check", title, [
            ("No world check: only a controlled-modality dataset (`synthetic`) has one; "
             "`bench run` writes it (`world_check.json`) when the suite runs on one.")])
    blocks: list = [("What the controlled-modality world must show if the world and the "
                     "harness work (docs/synthetic.md; the expectations were written before the "
                     "numbers and are never tuned to pass), measured over the suite's seeds. A "
                     "failed expectation is a finding about the models or the world.")]
    for label, doc in checks.items():
        c = doc["counts"]
        blocks.append(f"`{label}`, {_name(doc['metric'])}, seeds {doc['seeds']}: "
                      f"{c['pass']} pass, {c['fail']} fail, {c['skipped']} skipped.")
        rows = [[Cell(e["id"]), Cell(e["claim"]),
                 Cell(e["status"].upper(), bold=e["status"] == "fail"),
                 Cell(e.get("reason", ""))] for e in doc["expectations"]]
        blocks.append(Table(_slug("world-check", label), f"World check on {label}",
                            ["expectation", "claim", "status", "details"], rows, latex=False))
    return Section("world-check", title, blocks)


def _signal_columns(groups: set[str]) -> list[str]:
    signals = sorted({g.split(",")[0][7:] for g in groups if g.startswith("signal=")},
                     key=lambda s: (s not in SIGNAL_ORDER, SIGNAL_ORDER.index(s)
                                    if s in SIGNAL_ORDER else 0, s))
    cols = []
    for s in signals:
        split = [f"signal={s},target={t}" for t in ("warm", "cold")
                 if f"signal={s},target={t}" in groups]
        cols += split or [f"signal={s}"]
    return cols + [f"target={t}" for t in ("warm", "cold") if f"target={t}" in groups]


def _signals(ctx: _Ctx) -> Section:
    res, name = ctx.res, _name(ctx.metric)
    blocks: list = [(f"Test {name} by the signal that generated each test target (visual, "
                    "textual, collaborative, popularity) and by warm/cold target item, on the "
                    "datasets that label their cases (the controlled-modality dataset "
                    "`synthetic`, docs/synthetic.md): mean ± 95% CI over seeds, best in bold.")]
    found = False
    for d in res.datasets:
        runs = [r for r in res.runs if r.dataset == d]
        groups = {g for r in runs for g in r.row.get("test_groups", {})}
        if not any(g.startswith("signal=") for g in groups):
            continue
        found = True
        cols = _signal_columns(groups)
        sizes = next((r.row.get("test_group_sizes", {}) for r in runs), {})
        header = ["model"] + [g.replace("signal=", "").replace(",target=", " ")
                              .replace("target=", "all ") + (f" (n={sizes[g]})" if g in sizes
                                                             else "") for g in cols]
        models = [m for m in res.models if res.runs_of(d, m)]

        def vals(m: str, g: str, d: str = d) -> list[float]:
            return [r.row["test_groups"][g][ctx.metric] for r in res.runs_of(d, m)
                    if ctx.metric in r.row.get("test_groups", {}).get(g, {})]

        blocks.append(_mean_table(_slug("signals", d), f"Test {name} by signal on {d}", header,
                                  cols, [[vals(m, g) for g in cols] for m in models],
                                  [[m] for m in models]))
        signal_cols = [g for g in cols if g.startswith("signal=")]
        panels = []
        for t in ("warm", "cold", None):
            gs = [g for g in signal_cols if (t is None and "," not in g) or
                  (t is not None and g.endswith(f"target={t}"))]
            if gs:
                panels.append((f"{d}: {t} targets" if t else d,
                               [g.split(",")[0][7:] for g in gs],
                               {m: [mean_ci(vals(m, g)) for g in gs] for m in models}))
        blocks.append(Figure(_slug("signals", d), plots.grouped_bars(panels, name, ctx.styles),
                             f"Test {name} on {d} by signal (bars: mean over seeds; error bars: "
                             "95% CI; each model has its own hatch)."))
    if not found:
        blocks = [("No dataset of this suite labels its test cases by signal; the "
                  "controlled-modality dataset `synthetic` does (docs/synthetic.md).")]
    return Section("signals", "Accuracy by signal type", blocks)


def _robustness(ctx: _Ctx) -> Section:
    title = "Robustness to missing or noisy modalities"
    data, name = ctx.res.robustness, _name(ctx.metric)
    if data is None:
        return Section("robustness", title, [_missing("robustness", "robustness.json", ctx)])
    rows = [r for r in data["rows"] if ctx.metric in r["metrics"]]
    blocks: list = [(f"Test {name} under test-time perturbations at increasing rates (from "
                    "`robustness.json`): mean ± 95% CI over seeds, best in bold.")]
    if not rows:
        return Section("robustness", title, blocks + [f"`robustness.json` has no {name}."])
    curves = list(dict.fromkeys((str(r.get("dataset", "")), str(r["perturbation"]))
                                for r in rows))
    models = [m for m in ctx.res.models if any(r["model"] == m for r in rows)]
    models += sorted({r["model"] for r in rows} - set(models))
    styles = {**plots.styles(models), **ctx.styles}
    panels = []
    for d, pert in curves:
        sel = [r for r in rows if str(r.get("dataset", "")) == d and str(r["perturbation"]) == pert]
        rates = sorted({float(r["rate"]) for r in sel})
        present = [m for m in models if any(r["model"] == m for r in sel)]
        cells = [[[r["metrics"][ctx.metric] for r in sel
                   if r["model"] == m and float(r["rate"]) == rate] for rate in rates]
                 for m in present]
        label = f"{d}: {pert}" if d else pert
        blocks.append(_mean_table(_slug("robustness", d, pert), f"Test {name} under {label}",
                                  ["model", *(f"rate {x:g}" for x in rates)],
                                  [str(x) for x in rates], cells, [[m] for m in present]))
        series = []
        for m, model_cells in zip(present, cells):
            xs = [x for x, c in zip(rates, model_cells) if c]
            stats = [mean_ci(c) for c in model_cells if c]
            series.append(plots.Series(m, xs, [s[0] for s in stats], [s[1] for s in stats],
                                       style=styles[m]))
        panels.append(plots.Panel(label, series))
    blocks.append(Figure("robustness", plots.line_panels(panels, "perturbation rate", name, True),
                         f"Robustness curves: test {name} against the perturbation rate "
                         "(error bars: 95% CI over seeds)."))
    return Section("robustness", title, blocks)


def _training_curves(ctx: _Ctx) -> list:
    """Training loss and validation metric per epoch (mean over seeds) from ``result.json``."""
    res, name = ctx.res, _name(ctx.metric)
    panels = []
    for d in res.datasets:
        for key, label in (("train_loss", "training loss"), (f"valid_{ctx.metric}",
                                                               f"validation {name}")):
            series = []
            for m in res.models:
                by_epoch: dict[int, list[float]] = {}
                for run in res.runs_of(d, m):
                    for row in ((run.result or {}).get("train") or {}).get("history") or []:
                        if key in row and "epoch" in row:
                            by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
                if by_epoch:
                    xs = sorted(by_epoch)
                    series.append(plots.Series(m, xs, [float(np.mean(by_epoch[x])) for x in xs],
                                               style=ctx.styles[m]))
            if series:
                panels.append(plots.Panel(f"{d}: {label}", series))
    if not panels:
        return []
    return [Figure("training", plots.line_panels(panels, "epoch", "", True, integer_x=True),
                   f"Training curves of the trained models (from each run's `result.json`): "
                   f"training loss and validation {name} per epoch, mean over seeds.")]


def _diagnostics(ctx: _Ctx) -> Section:
    title = "Modality diagnostics"
    data = ctx.res.diagnostics
    if data is None:
        return Section("diagnostics", title, [_missing("diagnostics", "diagnostics.json", ctx),
                                              *_training_curves(ctx)])
    rows = []
    for e in data["models"]:
        where = " / ".join(str(e[k]) for k in ("dataset", "seed") if k in e)
        metrics = "; ".join(f"{k}={_num(v)}" for k, v in sorted(e.get("metrics", {}).items()))
        status = str(e.get("status", ""))
        rows.append([Cell(str(e["model"])), Cell(where), Cell(status, status == "fail"),
                     Cell(str(e["verdict"])), Cell(metrics)])
    blocks: list = [("Verdicts and measures of each model's use of its modalities (from "
                    "`diagnostics.json`)."),
                    Table("diagnostics", "Diagnostics verdicts",
                          ["model", "dataset / seed", "status", "verdict", "measures"], rows)]
    figures = diagnostics_figures(data)
    if "diagnostics" in figures:
        blocks.append(Figure("diagnostics", figures["diagnostics"],
                             "Per-step diagnostic series of each model."))
    if "diagnostics-training" in figures:
        blocks.append(Figure("diagnostics-training", figures["diagnostics-training"],
            "Recorded during training (first seed of each model): in-batch unimodal retrieval "
            "probabilities p_text / p_image, and per-modality gradient norms on the shared "
            "trainable parameters, each branch's loss back-propagated separately."))
    return Section("diagnostics", title, blocks + _training_curves(ctx))


def diagnostics_figures(data: dict) -> dict[str, bytes]:
    """The figures of a ``diagnostics.json`` document (name -> PNG bytes): ``diagnostics``
    (each entry's ``series``) and ``diagnostics-training`` (the training series); a figure
    without data is absent. Shared by the report and ``bench diagnose``."""
    entries = data["models"]  # a list (the report's loader turns the {name: entry} form into one)
    panels = []
    for e in entries:
        where = " / ".join(str(e[k]) for k in ("dataset", "seed") if k in e)
        series = [plots.Series(k, list(range(len(v))), v) for k, v in e.get("series", {}).items()]
        if series:
            panels.append(plots.Panel(f"{e['model']} ({where})" if where else str(e["model"]),
                                      series))
    out = {}
    if panels:
        out["diagnostics"] = plots.line_panels(panels, str(data.get("step", "step")), "value",
                                               False, integer_x=True)
    training = _training_series_panels(entries)
    if training:
        out["diagnostics-training"] = plots.line_panels(training, "training step", "value",
                                                        False, integer_x=True)
    return out


def _training_series_panels(entries: list[dict]) -> list:
    """Two panels per (dataset, model) with training series, from its first seed's entry:
    unimodal retrieval (p_text, p_image) and gradient norms (grad_text, grad_image)."""
    panels, seen = [], set()
    for e in entries:
        t = e.get("training") or {}
        key = (e.get("dataset"), e["model"])
        if not t or key in seen:
            continue
        seen.add(key)
        for what, names in (("unimodal retrieval", ("p_text", "p_image")),
                            ("gradient norm", ("grad_text", "grad_image"))):
            series = []
            for name in names:
                pts = [(x, y) for x, y in zip(t["step"], t.get(name, ())) if y is not None]
                if pts:
                    series.append(plots.Series(name, [x for x, _ in pts], [y for _, y in pts]))
            if series:
                panels.append(plots.Panel(f"{e['model']} ({e.get('dataset')})\n{what}", series))
    return panels


def _sweeps(ctx: _Ctx) -> Section:
    title = "Hyper-parameter sweeps"
    data = ctx.res.sweep
    if data is None:
        return Section("sweeps", title, [_missing("sweeps", "sweep.json", ctx)])
    rows, panels = [], []
    style = plots.styles(["trial value", "best so far"])
    for s in data["studies"]:
        trials = sorted(s.get("trials", []), key=lambda t: t.get("number", 0))
        done = [t for t in trials if str(t.get("state", "COMPLETE")).upper() == "COMPLETE"
                and t.get("value") is not None]
        maximize = str(s.get("direction", "maximize")).lower().startswith("max")
        best = s.get("best_value")
        if best is None and done:
            best = (max if maximize else min)(t["value"] for t in done)
        params = ", ".join(f"{k}={_num(v)}" for k, v in sorted((s.get("best_params") or {})
                                                                .items())) or "—"
        label = f"{s['model']} / {s.get('dataset', '')}".rstrip(" /")
        states = s.get("states") or {}
        n_trials = len(trials) or sum(states.values())
        n_done = len(done) or states.get("COMPLETE", 0)
        importances = ", ".join(f"{k} {v:.2f}" for k, v in sorted(
            (s.get("importances") or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:3])
        rows.append([Cell(str(s["model"])), Cell(str(s.get("dataset", ""))),
                     Cell(str(s.get("metric", data.get("objective", "valid ndcg@10")))),
                     Cell(str(n_trials)), Cell(str(n_done)),
                     Cell("—" if best is None else f"{best:.4f}"), Cell(params),
                     Cell(importances or "—")])
        if done:
            xs, ys = [t.get("number", i) for i, t in enumerate(done)], [t["value"] for t in done]
            running = (np.maximum if maximize else np.minimum).accumulate(ys).tolist()
            panels.append(plots.Panel(label, [
                plots.Series("trial value", xs, ys, kind="points", style=style["trial value"]),
                plots.Series("best so far", xs, running, kind="step",
                             style=style["best so far"])]))
    blocks: list = [(f"Optuna studies on validation only (from `{ctx.res.sweep_path}`); the test "
                    "set is never used for selection."),
                    Table("sweeps", "Sweep studies", ["model", "dataset", "objective", "trials",
                                                      "complete", "best value", "best params",
                                                      "top importances"], rows)]
    if panels:
        blocks.append(Figure("sweeps", plots.line_panels(panels, "trial", "objective", True,
                                                         integer_x=True),
                             "Sweep histories: each complete trial's value and the best so far."))
    return Section("sweeps", title, blocks)


def _provenance(ctx: _Ctx) -> Section:
    blocks: list = [("One card per result (BARS-style), from each run's `result.json`: dataset "
                    "and split hashes, config hash and full config, code version, packages, "
                    "hardware, seed, wall time and MLflow run id.")]
    rows, cards = [], []
    for run in ctx.res.runs:
        title = f"{run.dataset} / {run.model} / seed {run.seed}"
        if run.result is None:
            rows.append([Cell(run.dataset), Cell(run.model), Cell(str(run.seed))]
                        + [Cell("result.json missing")] + [Cell("—")] * 5)
            cards.append(Card(title, [("result.json", f"missing in {run.run_dir}")], "{}"))
            continue
        p, train = run.result.get("provenance", {}), run.result.get("train", {})
        ds, split, code = p.get("dataset", {}), p.get("split", {}), p.get("code", {})
        commit = str(code.get("commit"))[:10] + (" (dirty)" if code.get("dirty") else "")
        rows.append([Cell(x) for x in (
            run.dataset, run.model, str(run.seed), str(ds.get("content_hash"))[:12],
            str(split.get("checksum"))[:12], str(p.get("config_hash")), commit,
            f"{p.get('wall_seconds', float('nan')):.1f}", str(p.get("mlflow_run_id")))])

        def kv(obj) -> str:
            return ", ".join(f"{k}={_num(v)}" for k, v in sorted((obj or {}).items()))

        fields = [("dataset", f"{ds.get('name')} (content hash {ds.get('content_hash')})"),
                  ("counts", kv(ds.get("counts"))), ("modality coverage", kv(ds.get("coverage"))),
                  ("data findings", "; ".join(ds.get("findings") or []) or "none"),
                  ("split", kv(split)), ("config hash", str(p.get("config_hash"))),
                  ("code", f"commit {code.get('commit')}, dirty={code.get('dirty')}"),
                  ("packages", kv(p.get("packages"))), ("hardware", kv(p.get("hardware"))),
                  ("seed", str(p.get("seed", run.seed))),
                  ("wall time", f"{p.get('wall_seconds', float('nan')):.1f} s"),
                  ("training", f"best epoch {train.get('best_epoch')} of {train.get('epochs')}"
                   if train else "not trained (statistics only)"),
                  ("MLflow run", f"{p.get('mlflow_run_id')} ({p.get('tracking_uri')})")]
        cards.append(Card(title, fields, json.dumps(p.get("config", {}), indent=2,
                                                     sort_keys=True, default=str)))
    blocks.append(Table("provenance", "Where each result came from (details in the cards below)",
                        ["dataset", "model", "seed", "data hash", "split checksum",
                         "config hash", "commit", "wall s", "MLflow run"], rows, latex=False))
    return Section("provenance", "Provenance cards", blocks + cards)
