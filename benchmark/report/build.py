"""Build a report from a suite's stored results and write it (HTML, Markdown, LaTeX, figures).

Nothing here trains or evaluates a model: every number comes from the files listed in
:mod:`benchmark.report.results`. Iteration orders come from the stored files (or are sorted), no
clock or path of the output enters the document, and figures are deterministic PNGs, so
rendering the same results twice gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..diagnostics import MODALITIES
from ..errors import ConfigError
from ..io import atomic_write, atomic_write_text
from ..stats import mean_ci
from . import plots
from .common import (
    DEFAULT_REFERENCE,
    Ctx,
    ReportOptions,
    card,
    empty,
    fmt_p,
    group_use,
    kv,
    name,
    num,
    params,
    pm,
    share,
    slug,
    ticks,
    train_info,
    verdicts,
)
from .document import (
    Bullets,
    Card,
    Cell,
    Document,
    Figure,
    Fold,
    Note,
    Section,
    Table,
    to_html,
    to_latex,
    to_markdown,
)
from .findings import caveats, findings
from .results import METRIC_RE, SuiteResults, load_results, metric_k, seed_averaged
from .significance import N_RESAMPLES, Comparison, compare, correct

__all__ = [
    "ReportOptions",
    "build_document",
    "diagnostics_figures",
    "pairwise",
    "render_report",
    "write_report",
]

SIGNAL_ORDER = ("visual", "textual", "collaborative", "popularity")
# How to produce each optional input (shown when it is absent).
PRODUCERS = {"robustness": "bench robustness --suite {suite}",
             "diagnostics": "bench diagnose --suite {suite}",
             "sweeps": "bench sweep --suite {suite}"}


def render_report(target: str | Path, results_dir: str | Path = "results",
                  out: str | Path = "reports", options: ReportOptions | None = None
                  ) -> dict[str, Path]:
    """Render ``<out>/<suite>/`` (``report.html``, ``report.md``, ``tables.tex``,
    ``figures/*.png``) from stored results; returns the written paths by kind."""
    results = load_results(target, results_dir)
    doc = build_document(results, options or ReportOptions())
    return write_report(doc, Path(out) / results.name)


def write_report(doc: Document, folder: Path) -> dict[str, Path]:
    rendered = {"html": to_html(doc), "markdown": to_markdown(doc), "latex": to_latex(doc)}
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    written = [atomic_write(figures / f"{fig.name}.png", lambda p, data=fig.png: p.write_bytes(data))
               for fig in doc.figures()]
    for stale in set(figures.glob("*.png")) - set(written):
        stale.unlink()
    paths = {"html": atomic_write_text(folder / "report.html", rendered["html"]),
             "markdown": atomic_write_text(folder / "report.md", rendered["markdown"]),
             "latex": atomic_write_text(folder / "tables.tex", rendered["latex"])}
    for path in [*written, *paths.values()]:
        path.chmod(0o644)  # a report is meant to be read (atomic writes create 0600 files)
    return {**paths, "figures": figures}


def build_document(res: SuiteResults, opts: ReportOptions) -> Document:
    from ..worldcheck import registry_model_info

    metric = _check_metric(res, opts.metric)
    reference = _reference(res, opts.reference)
    ctx = Ctx(res, opts, metric, reference, plots.styles(res.models))
    ctx.pairs, ctx.pair_notes = pairwise(res, metric, opts.n_resamples, opts.seed)
    ctx.roles = {m: i["role"] for m, i in registry_model_info(res.models).items()}
    sections = [_overview(ctx), Section("findings", "Findings", [
        ("Generated from the statistics below (nothing here is written by hand); each claim "
         "can be traced to the pairwise, diagnostics and world-check tables."),
        Bullets(findings(ctx))]),
        Section("caveats", "Caveats", [Note("Read the numbers with these limits in mind "
                                            "(from the provenance cards, sweep, world check and "
                                            "diagnostics)",
                                            [Bullets(caveats(ctx))])]),
        _main(ctx), _significance(ctx), _signals(ctx), _world_check(ctx), _diagnostics(ctx),
        _robustness(ctx), _training(ctx), _sweeps(ctx), _provenance(ctx)]
    subtitle = (f"Suite `{res.name}`, rendered from stored results only by `bench report`. "
                f"Reference model: `{reference}`; significance metric: {name(metric)}.")
    return Document(f"Benchmark report: {res.name}", subtitle, sections)


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


def _bold_best(rows: list[list[Cell]], means: list[list[float]], first: int) -> None:
    """Bold the highest mean of each column from ``first`` on (ties at 4 decimals all bold)."""
    for j in range(len(means[0]) if means else 0):
        col = [round(m[j], 4) for m in means if not math.isnan(m[j])]
        if len(col) > 1 and max(col) > min(col):  # when all tie, nothing is best
            for row, m in zip(rows, means):
                row[first + j].bold = round(m[j], 4) == max(col)


def _mean_table(label: str, caption: str, header: list[str],
                cells: list[list[Sequence[float]]], lead: list[list[str]]) -> Table:
    """Rows ``lead[i] + [mean ± CI of cells[i][j]]`` with the best of each column in bold."""
    rows, means = [], []
    for lead_cells, values in zip(lead, cells):
        pms = [pm(v) for v in values]
        rows.append([Cell(x) for x in lead_cells] + [Cell(text) for _, text in pms])
        means.append([m for m, _ in pms])
    n_lead = len(lead[0]) if lead else 0
    _bold_best(rows, means, n_lead)
    return Table(label, caption, header, rows, lead=max(1, n_lead))


def _missing(section: str, what: str, ctx: Ctx) -> str:
    cmd = PRODUCERS[section].format(suite=ctx.res.name)
    return f"Not run for this suite (run `{cmd}`): no {what} was found."


# -- sections ------------------------------------------------------------------------------------

def _overview(ctx: Ctx) -> Section:
    res = ctx.res
    seeds = sorted({r.seed for r in res.runs})
    first = next((card(r) for r in res.runs if r.result), {})
    ev = first.get("config", {}).get("evaluation", {})
    mode = ev.get("mode", "unknown")
    if mode == "sampled":
        mode += f" ({ev.get('n_negatives')} seeded negatives per case; a compatibility mode)"
    split = first.get("split", {})
    blocks: list = [
        (f"{len(res.runs)} completed runs: {len(res.datasets)} dataset(s) "
         f"({ticks(res.datasets)}) × {len(res.models)} model(s) ({ticks(res.models)}) × seeds "
         f"{', '.join(map(str, seeds))}."),
        (f"Evaluation: {mode} ranking, split `{split.get('kind', 'unknown')}`; metrics on the "
         "test cases, each touched once after model selection on validation."),
        f"Regenerate this report with `{ctx.opts.command or f'bench report {res.name}'}`."]
    if res.failed:
        blocks.append(f"{len(res.failed)} run(s) did not complete and are left out: "
                      + ", ".join(f"`{r.get('dataset')}/{r.get('model')}/seed-{r.get('seed')}`"
                                  for r in res.failed) + ".")
    return Section("overview", "Overview", blocks)


def _main(ctx: Ctx) -> Section:
    res, metric = ctx.res, name(ctx.metric)
    blocks: list = [("Test metrics: mean ± half-width of the 95% t confidence interval over seeds "
                     "(± 0 with a single seed or a deterministic model). Best mean of each column "
                     "in bold. The second table puts validation (the split that selected the "
                     f"epoch and, in a sweep, the configuration) next to test for {metric}, with "
                     "each seed's test value and the configuration each row used.")]
    panels = []
    for d in res.datasets:
        models = ctx.models_of(d)
        metrics = _metric_order({k for m in models for r in res.runs_of(d, m) for k in r.row["test"]})
        cells = [[[r.row["test"][k] for r in res.runs_of(d, m) if k in r.row["test"]]
                  for k in metrics] for m in models]
        lead = [[m, str(len(res.runs_of(d, m)))] for m in models]
        blocks.append(_mean_table(slug("main", d), f"Test accuracy on {d}",
                                  ["model", "seeds", *map(name, metrics)], cells, lead))
        blocks.append(_valid_test(ctx, d, models))
        panels.append((d, [(m, *mean_ci([r.row["test"][ctx.metric] for r in res.runs_of(d, m)]))
                           for m in models]))
    blocks.append(Figure("main", plots.dot_plot(panels, metric, ctx.styles),
                         f"Test {metric} per model: mean and 95% CI over seeds."))
    return Section("main", "Main results", blocks)


def _valid_test(ctx: Ctx, d: str, models: list[str]) -> Table:
    res, metric = ctx.res, ctx.metric
    seeds = sorted({r.seed for m in models for r in res.runs_of(d, m)})
    rows, means = [], []
    for m in models:
        runs = res.runs_of(d, m)
        by_seed = {r.seed: r.row["test"].get(metric) for r in runs}
        valid = pm([r.row["valid"][metric] for r in runs if metric in r.row.get("valid", {})])
        test = pm([r.row["test"][metric] for r in runs])
        rows.append([Cell(m), Cell(group_use(res, runs).label), Cell(valid[1]), Cell(test[1])]
                    + [Cell("—" if by_seed.get(s) is None else f"{by_seed[s]:.4f}")
                       for s in seeds])
        means.append([valid[0], test[0]])
    _bold_best(rows, means, 2)
    return Table(slug("valid-test", d), f"Validation and test {name(metric)} on {d}, per seed",
                 ["model", "configuration", f"valid {name(metric)}", f"test {name(metric)}",
                  *(f"test seed {s}" for s in seeds)], rows)


def pairwise(res: SuiteResults, metric: str, n_resamples: int = N_RESAMPLES, seed: int = 0
             ) -> tuple[list[Comparison], list[str]]:
    """Every pair of models on every dataset (each pair once, in suite order: differences are
    earlier model − later model), Holm-corrected over all of them; plus notes on the
    comparisons that could not be made."""
    out, notes = [], []
    for d in res.datasets:
        vectors = {}
        for m in res.models:
            if res.runs_of(d, m):
                v = seed_averaged(res.runs_of(d, m), metric)
                if v is None:
                    notes.append(f"`{d}/{m}`: per_case.npz missing: not compared.")
                else:
                    vectors[m] = v
        names = list(vectors)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                users = np.intersect1d(vectors[a][0], vectors[b][0])
                va = vectors[a][1][np.searchsorted(vectors[a][0], users)]
                vb = vectors[b][1][np.searchsorted(vectors[b][0], users)]
                out.append(compare(d, a, b, va, vb, n_resamples, seed))
    return correct(out), notes


def _verdict(c: Comparison, alpha: float) -> str:
    """Words for ``c`` (model − reference) that say which direction is higher."""
    if c.significant(alpha):
        return f"higher than {c.reference} (significant)" if c.diff > 0 else \
            f"lower than {c.reference} (significant)"
    if c.ci_low > 0 or c.ci_high < 0:
        return "not significant after Holm (95% CI excludes 0)"
    return "no significant difference"


def _significance(ctx: Ctx) -> Section:
    o, metric, ref = ctx.opts, name(ctx.metric), ctx.reference
    title = "Paired significance"
    blocks: list = [
        (f"Every pair of models, paired over the test users both evaluated. A user's value is "
         f"their {metric} averaged over the model's seeds (so n = users, not users × seeds, and "
         "seed noise does not count as evidence). Two tests: the paired t-test and a two-sided "
         f"sign-flip permutation test ({o.n_resamples:,} resamples, seed {o.seed}). Effect "
         f"size: Δ = mean difference, with its 95% percentile bootstrap CI over users "
         f"({o.n_resamples:,} resamples, seed {o.seed}), and Cohen's d_z = Δ / sd of the "
         f"differences. Holm correction across all {len(ctx.pairs)} pairwise comparisons of "
         f"this report, for each test; a difference is called significant only when both "
         f"corrected p-values are ≤ {o.alpha}."),
        ("Why a CI can exclude 0 while the verdict says \"not significant\": the bootstrap CI "
         "is a per-comparison 95% interval (uncorrected), while the verdict is corrected for "
         f"the {len(ctx.pairs)} comparisons made; such rows read \"not significant after Holm "
         "(95% CI excludes 0)\"."), *ctx.pair_notes]
    if not ctx.pairs:
        blocks.append("Nothing to compare: the suite has a single model.")
        return Section("significance", title, blocks)
    rows, panels = [], []
    for d in ctx.res.datasets:
        comps = [c for c in (ctx.pair(d, m, ref) for m in ctx.models_of(d) if m != ref) if c]
        for c in comps:
            sig = c.significant(o.alpha)
            rows.append([Cell(c.model), Cell(c.dataset), Cell(str(c.n)),
                         Cell(f"{c.mean_model:.4f}"), Cell(f"{c.mean_reference:.4f}"),
                         Cell(f"{c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"),
                         Cell(f"{c.dz:+.3f}"), Cell(fmt_p(c.p_t)), Cell(fmt_p(c.p_perm)),
                         Cell(fmt_p(c.p_t_holm), c.p_t_holm <= o.alpha),
                         Cell(fmt_p(c.p_perm_holm), c.p_perm_holm <= o.alpha),
                         Cell(_verdict(c, o.alpha), sig)])
        if comps:
            panels.append((d, [(c.model, c.diff, c.ci_low, c.ci_high, c.significant(o.alpha))
                               for c in comps]))
    if rows:
        blocks.append(Table("significance-reference",
                            f"Each model against {ref} ({metric}): Δ = model − {ref}; "
                            f"corrected p ≤ {o.alpha} in bold",
                            ["model", "dataset", "users", metric, f"{metric} of {ref}",
                             f"Δ = model − {ref} [95% CI]", "d_z", "p t-test", "p perm.",
                             "p t-test (Holm)", "p perm. (Holm)", "verdict"], rows))
        blocks.append(Figure("significance", plots.forest_plot(
            panels, f"Δ {metric} = model − {ref}", ctx.styles),
            f"Mean per-user difference in {metric}, model − {ref}, with its 95% bootstrap CI; "
            "right of 0: the model scores higher than the reference; filled marker: significant "
            "after Holm correction (both tests), open: not."))
    heat = []
    for d in ctx.res.datasets:
        models = [m for m in ctx.models_of(d) if any(c.dataset == d and m in (c.model,
                                                                              c.reference)
                                                     for c in ctx.pairs)]
        if len(models) < 2:
            continue
        table_rows, values, notes = [], [], []
        for a in models:
            cells, vrow, nrow = [Cell(a)], [], []
            for b in models:
                c = None if a == b else ctx.pair(d, a, b)
                if c is None:
                    cells.append(Cell("—"))
                    vrow.append(math.nan)
                    nrow.append("")
                    continue
                sig = c.significant(o.alpha)
                cells.append(Cell(f"{c.diff:+.4f} (p {fmt_p(c.p_holm)})", sig))
                vrow.append(c.diff)
                nrow.append(f"{c.diff:+.3f}" + ("*" if sig else ""))
            table_rows.append(cells)
            values.append(vrow)
            notes.append(nrow)
        blocks.append(Table(slug("pairwise", d),
                            f"Pairwise {metric} on {d}: cell = Δ = row model − column model "
                            "(Holm p, the larger of the two tests'); significant in bold",
                            ["row − column", *models], table_rows))
        heat.append((d, models, models, values, notes))
    if heat:
        blocks.append(Figure("pairwise", plots.heatmap(heat, f"Δ {metric} (row − column)",
                                                       diverging=True),
                             f"Pairwise differences in test {metric}, row model − column model "
                             "(red: the row model scores higher); * significant after Holm "
                             "correction over all pairs (both tests)."))
    return Section("significance", title, blocks)


def _world_check(ctx: Ctx) -> Section:
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
        blocks.append(f"`{label}`, {name(doc['metric'])}, seeds {doc['seeds']}: "
                      f"{c['pass']} pass, {c['fail']} fail, {c['skipped']} skipped.")
        rows = [[Cell(e["id"]), Cell(e["claim"]),
                 Cell(e["status"].upper(), bold=e["status"] == "fail"),
                 Cell(e.get("reason", ""))] for e in doc["expectations"]]
        blocks.append(Table(slug("world-check", label), f"World check on {label}",
                            ["expectation", "claim", "status", "details"], rows))
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


def _signals(ctx: Ctx) -> Section:
    res, metric = ctx.res, name(ctx.metric)
    blocks: list = [(f"Test {metric} by the signal that generated each test target (visual, "
                     "textual, collaborative, popularity) and by warm/cold target item, on the "
                     "datasets that label their cases (the controlled-modality dataset "
                     "`synthetic`, docs/synthetic.md): mean ± 95% CI over seeds, best in bold.")]
    heat = []
    for d in res.datasets:
        runs = [r for r in res.runs if r.dataset == d]
        groups = {g for r in runs for g in r.row.get("test_groups", {})}
        if not any(g.startswith("signal=") for g in groups):
            continue
        cols = _signal_columns(groups)
        sizes = next((r.row.get("test_group_sizes", {}) for r in runs), {})
        protocols = {g: p for r in runs for g, p in (r.row.get("test_group_protocols")
                                                     or {}).items()}
        labels = [g.replace("signal=", "").replace(",target=", " ").replace("target=", "all ")
                  + ("*" if g in protocols else "") for g in cols]
        header = ["model"] + [lab + (f" (n={sizes[g]})" if g in sizes else "")
                              for lab, g in zip(labels, cols)]
        models = ctx.models_of(d)

        def vals(m: str, g: str, d: str = d) -> list[float]:
            return [r.row["test_groups"][g][ctx.metric] for r in res.runs_of(d, m)
                    if ctx.metric in r.row.get("test_groups", {}).get(g, {})]

        if protocols:
            kinds = sorted(set(protocols.values()))
            blocks.append(f"Columns marked * on `{d}` use another protocol than the rest: "
                          + "; ".join(kinds) + ". Their values are not comparable with the "
                          "unmarked columns, only between models.")
        blocks.append(_mean_table(slug("signals", d), f"Test {metric} by signal on {d}", header,
                                  [[vals(m, g) for g in cols] for m in models],
                                  [[m] for m in models]))
        means = [[mean_ci(vals(m, g))[0] for g in cols] for m in models]
        heat.append((d, models, labels, means,
                     [["" if math.isnan(v) else f"{v:.3f}" for v in row] for row in means]))
    if not heat:
        return Section("signals", "Accuracy by signal type", [
            ("No dataset of this suite labels its test cases by signal; the "
             "controlled-modality dataset `synthetic` does (docs/synthetic.md).")])
    blocks.append(Figure("signals", plots.heatmap(heat, f"test {metric}"),
                         f"Test {metric} per model (rows) and case group (columns), mean over "
                         "seeds; * cold-start protocol (see above)."))
    return Section("signals", "Accuracy by signal type", blocks)


def _robustness(ctx: Ctx) -> Section:
    title = "Robustness to missing or noisy modalities"
    data, metric = ctx.res.robustness, name(ctx.metric)
    if data is None:
        return Section("robustness", title, [_missing("robustness", "robustness.json", ctx)])
    rows = [r for r in data["rows"] if ctx.metric in r["metrics"]]
    blocks: list = [(f"Test {metric} under test-time perturbations at increasing rates (from "
                     "`robustness.json`): mean ± 95% CI over seeds, best in bold.")]
    if not rows:
        return Section("robustness", title, blocks + [f"`robustness.json` has no {metric}."])
    curves = list(dict.fromkeys((str(r.get("dataset", "")), str(r["perturbation"]))
                                for r in rows))
    grids = {c: sorted({float(r["rate"]) for r in rows
                        if (str(r.get("dataset", "")), str(r["perturbation"])) == c})
             for c in curves}
    if len({tuple(g) for g in grids.values()}) > 1:
        blocks.append("The perturbations were evaluated at different rates: " + "; ".join(
            f"{p}{f' on {d}' if d else ''} at {', '.join(f'{x:g}' for x in g)}"
            for (d, p), g in grids.items()) + " (`bench diagnose` adds rates 0 and 1 of "
            "drop_image and drop_text; run `bench robustness` with one `--rates` list for "
            "every perturbation to compare curves point by point).")
    models = [m for m in ctx.res.models if any(r["model"] == m for r in rows)]
    models += sorted({r["model"] for r in rows} - set(models))
    styles = {**plots.styles(models), **ctx.styles}
    panels = []
    for d, pert in curves:
        sel = [r for r in rows if str(r.get("dataset", "")) == d and str(r["perturbation"]) == pert]
        rates = grids[(d, pert)]
        present = [m for m in models if any(r["model"] == m for r in sel)]
        cells = [[[r["metrics"][ctx.metric] for r in sel
                   if r["model"] == m and float(r["rate"]) == rate] for rate in rates]
                 for m in present]
        label = f"{d}: {pert}" if d else pert
        blocks.append(_mean_table(slug("robustness", d, pert), f"Test {metric} under {label}",
                                  ["model", *(f"rate {x:g}" for x in rates)], cells,
                                  [[m] for m in present]))
        series = []
        for m, model_cells in zip(present, cells):
            xs = [x for x, c in zip(rates, model_cells) if c]
            stats = [mean_ci(c) for c in model_cells if c]
            series.append(plots.Series(m, xs, [s[0] for s in stats], [s[1] for s in stats],
                                       style=styles[m]))
        panels.append(plots.Panel(label, series))
    blocks.append(Figure("robustness", plots.line_panels(panels, "perturbation rate", metric,
                                                         True),
                         f"Robustness curves: test {metric} against the perturbation rate "
                         "(error bars: 95% CI over seeds)."))
    return Section("robustness", title, blocks)


# -- diagnostics ---------------------------------------------------------------------------------

def _diagnostics(ctx: Ctx) -> Section:
    title = "Modality diagnostics"
    data = ctx.res.diagnostics
    if data is None:
        return Section("diagnostics", title, [_missing("diagnostics", "diagnostics.json", ctx)])
    found = verdicts(data)
    metric = name(data.get("metric", "ndcg@10"))
    if "verdicts" in data:
        blocks: list = [
            ("Each model's verdict over its seeds, from `diagnostics.json` (`bench diagnose`; the "
             "rule, every term and the file's schema: docs/robustness.md). A failing status is "
             "in bold; each seed's own verdict is in the fold below."),
            Bullets(_verdict_terms(metric, data.get("alpha")))]
    else:
        blocks = [("`diagnostics.json` is schema 1, written by an earlier `bench diagnose`: a "
                   "verdict per seed under the earlier rule (contributions clamped at 0, on all "
                   "test cases, against a fixed threshold, without a test). Shown per model: "
                   "the seeds' outcome (counted when they differ), and clean → without and the "
                   "contribution as mean with the 95% t-interval over seeds. Rerun `bench "
                   f"diagnose --suite {ctx.res.name}` for verdicts with evidence "
                   "(docs/robustness.md).")]
    if found:
        blocks.append(_verdict_table(found, len({v["dataset"] for v in found}) > 1, metric))
    figures = diagnostics_figures(data, chance=_chance_levels(ctx))
    if "diagnostics" in figures:
        blocks.append(Figure("diagnostics", figures["diagnostics"],
                             f"Contribution of each modality per model: the share of the cell's "
                             f"{metric} lost without it, signed (left of 0: removing the "
                             "modality raises the score), mean over seeds with the 95% CI over "
                             "seeds (no bar with one seed)"
                             + ("; hollow marker: no effect established (state none or "
                                "inconclusive)." if "verdicts" in data else ".")))
    if "diagnostics-training" in figures:
        blocks.append(Figure("diagnostics-training", figures["diagnostics-training"],
            "Recorded during training (first seed; models sharing one training are drawn once): "
            "in-batch unimodal retrieval probabilities p_text / p_image with the chance level "
            "(dashed, 1 / in-batch candidates), and per-modality gradient norms on the shared "
            "trainable parameters. The last step of an epoch can be a partial batch: fewer "
            "candidates, so a higher chance level and p there."))
    blocks.append(_per_entry_fold(data["models"]))
    return Section("diagnostics", title, blocks)


def _verdict_terms(metric: str, alpha) -> list[str]:
    """What each column of the verdict table means (docs/robustness.md defines them)."""
    return [("cell: the test cases a modality is judged on (on a controlled-modality world the "
             "cold targets of its signal, where only content can rank the target; else all test "
             "cases), with its number of users;"),
            (f"clean → without: mean test {metric} on the cell with everything present and with "
             "the modality removed from every item (mean over seeds);"),
            ("contribution: (clean − without) / clean, signed (negative: removing the modality "
             "raises the score), mean over seeds with the 95% t-interval over seeds (none with "
             "one seed);"),
            ("Holm p: the paired t-test and the sign-flip permutation test over users of the "
             "seed-averaged differences, Holm-corrected over the two modalities, the larger of "
             f"the two (significant when ≤ α = {alpha});"),
            ("state: used / hurts (significant, and the interval over seeds of clean − without "
             "on the same side of 0), none (no effect detected), inconclusive (the test over "
             "users and the interval over seeds disagree).")]


def _verdict_table(found: list[dict], by_dataset: bool, metric: str) -> Table:
    """One row per model and modality, the model's own cells on its first row only; model and
    modality lead (a LaTeX part repeats them, so each part's rows stay identified)."""
    rows = []
    for v in found:
        for i, (mod, e) in enumerate(v["modalities"].items()):
            first = i == 0
            users = "" if e.get("n_users") is None else f" ({e['n_users']})"
            clean, without = e.get("clean_mean"), e.get("without_mean")
            rows.append([
                Cell(str(v["model"]) if first else ""),
                *([Cell(str(v["dataset"]) if first else "")] if by_dataset else []),
                Cell(mod),
                Cell(f"{v['outcome']} ({v['status']})" if first else "",
                     first and v["status"] == "fail"),
                Cell(", ".join(str(s) for s in v["seeds"]) if first else ""),
                Cell(f"{e.get('cell') or '—'}{users}"),
                Cell("—" if clean is None or without is None
                     else f"{clean:.4f} → {without:.4f}"),
                Cell(share(e.get("contribution_mean"), e.get("contribution_ci"))),
                Cell(fmt_p(e.get("p_holm"))), Cell(e.get("state") or "—")])
    header = ["model", *(["dataset"] if by_dataset else []), "modality", "outcome (status)",
              "seeds", "cell (users)", f"clean → without ({metric})",
              "contribution [95% CI over seeds]", "Holm p", "state"]
    return Table("diagnostics", "Modality verdict per model over its seeds (failing status in "
                 "bold)", header, rows, lead=2 + by_dataset)


def _per_entry_fold(entries: list[dict]) -> Fold:
    """Each seed's own entry: its verdict (the one-seed rule) and its measures."""
    rows = [[Cell(str(e["model"])), Cell(str(e.get("dataset", ""))),
             Cell(str(e.get("seed", ""))), Cell(str(e.get("status", "")),
                                                 str(e.get("status")) == "fail"),
             Cell(str(e["verdict"]))] for e in entries]
    keys = sorted({k for e in entries for k, v in (e.get("metrics") or {}).items()
                   if isinstance(v, (int, float))})
    measures = [[Cell(str(e["model"])), Cell(str(e.get("seed", "")))]
                + [Cell(num((e.get("metrics") or {}).get(k, "—"))) for k in keys]
                for e in entries]
    blocks: list = [Table("diagnostics-entries", "Verdict of each seed alone",
                          ["model", "dataset", "seed", "status", "verdict"], rows,
                          latex=False)]
    if keys:
        blocks.append(Table("diagnostics-measures", "Measures of each seed",
                            ["model", "seed", *keys], measures, latex=False, lead=2))
    return Fold("Each seed alone: its verdict and measures", blocks)


def _chance_levels(ctx: Ctx) -> dict[tuple[str, str], float]:
    """Chance level of the in-batch retrieval probabilities of each (dataset, model): 1 / the
    batch size of the training that logged them (a model's stage, if it has one)."""
    out = {}
    for d in ctx.res.datasets:
        for m in ctx.models_of(d):
            config = card(ctx.res.runs_of(d, m)[0]).get("config", {})
            size = (config.get("stage_params") or config.get("params") or {}).get("batch_size")
            if isinstance(size, int) and size > 0:
                out[(d, m)] = 1.0 / size
    return out


def diagnostics_figures(data: dict, chance: dict[tuple[str, str], float] | None = None
                        ) -> dict[str, bytes]:
    """The figures of a ``diagnostics.json`` document (name -> PNG bytes): ``diagnostics``
    (each model's signed modality contributions with their CIs over seeds, from its verdict)
    and ``diagnostics-training`` (the per-seed entries' training series, with a chance line
    from ``chance[(dataset, model)]``); a figure without data is absent. Shared by the report
    and ``bench diagnose``."""
    out = {}
    by_dataset: dict[str, list[dict]] = {}
    for v in verdicts(data):
        by_dataset.setdefault(v["dataset"], []).append(v)
    mods = [m for m in MODALITIES if any(m in v["modalities"] for vs in by_dataset.values()
                                         for v in vs)]
    if mods:
        panels = []
        for d, vs in by_dataset.items():
            values = {}
            for mod in mods:
                values[mod] = []
                for v in vs:
                    e = v["modalities"].get(mod)
                    if e is None or e.get("contribution_mean") is None:
                        values[mod].append(None)
                        continue
                    low, high = e.get("contribution_ci") or (None, None)
                    # schema 1 has no state: every point drawn alike
                    filled = e.get("state") in (None, "used", "hurts")
                    values[mod].append((e["contribution_mean"], low, high, filled))
            panels.append((d or "contributions", [str(v["model"]) for v in vs], values))
        out["diagnostics"] = plots.contribution_chart(
            panels, f"contribution: share of the cell's {name(data.get('metric', 'ndcg@10'))} "
                    "lost without the modality")
    training = _training_series_panels(data["models"], chance or {})
    if training:
        # two columns: each row is one training (retrieval | gradient norms)
        out["diagnostics-training"] = plots.line_panels(training, "training step", "value",
                                                        False, integer_x=True, cols=2)
    return out


def _training_series_panels(entries: list[dict], chance: dict[tuple[str, str], float]) -> list:
    """Two panels per distinct training (the first seed's entry of each (dataset, model);
    models whose series are identical, such as a model and the stage it reuses, share one):
    unimodal retrieval (p_text, p_image, chance) and gradient norms (grad_text, grad_image)."""
    distinct: dict[str, tuple[dict, list[str]]] = {}
    seen = set()
    for e in entries:
        t = e.get("training") or {}
        key = (e.get("dataset"), e["model"])
        if not t or key in seen:
            continue
        seen.add(key)
        ident = json.dumps(t, sort_keys=True)
        distinct.setdefault(ident, (e, []))[1].append(str(e["model"]))
    panels = []
    for e, models in distinct.values():
        t = e["training"]
        head = " = ".join(models) + (f" ({e['dataset']})" if e.get("dataset") else "")
        if len(models) > 1:
            head += ", one shared training"
        pair = []
        for what, names in (("unimodal retrieval", ("p_text", "p_image")),
                            ("gradient norm", ("grad_text", "grad_image"))):
            series = []
            for n in names:
                pts = [(x, y) for x, y in zip(t["step"], t.get(n, ())) if y is not None]
                if pts:
                    series.append(plots.Series(n, [x for x, _ in pts], [y for _, y in pts]))
            if series and what == "unimodal retrieval":
                level = chance.get((e.get("dataset"), e["model"]))
                if level is not None:
                    series.append(plots.Series("chance", list(t["step"]),
                                               [level] * len(t["step"]), kind="reference"))
            pair.append(plots.Panel(f"{head}\n{what}" + ("" if series else ": not recorded"),
                                    series))
        if any(p.series for p in pair):  # both panels, even one empty: one row per training
            panels += pair
    return panels


# -- training and cost ---------------------------------------------------------------------------

def _count(n) -> str:
    return "—" if n is None else f"{n:,}"


def _seeds_list(values: list) -> str:
    shown = ["—" if v is None else str(v) for v in values]
    return ", ".join(shown) if any(v is not None for v in values) else "—"


def _training(ctx: Ctx) -> Section:
    res = ctx.res
    blocks: list = [("What each model cost, per run (from `result.json`): wall seconds of the "
                     "whole run (build, training, evaluation), training seconds, epochs run and "
                     "the best validation epoch per seed (early stopping on validation "
                     f"{name('ndcg@10')}), the epoch cap, and the number of parameters of the "
                     "model (torch parameters; frozen content features stored as buffers are "
                     "not counted). Models without training are statistics (counts).")]
    for d in res.datasets:
        rows = []
        for m in ctx.models_of(d):
            runs = sorted(res.runs_of(d, m), key=lambda r: r.seed)
            train = [train_info(r) for r in runs]
            size = card(runs[0]).get("parameters") or {}
            trained = any(train)
            rows.append([
                Cell(m), Cell(pm([r.row.get("wall_seconds") or card(r).get("wall_seconds")
                                  or math.nan for r in runs], 1)[1]),
                Cell(pm([t["train_seconds"] for t in train if "train_seconds" in t], 1)[1]
                     if trained else "not trained"),
                Cell(_seeds_list([t.get("epochs") for t in train]) if trained else "—"),
                Cell(_seeds_list([t.get("best_epoch") for t in train]) if trained else "—"),
                Cell(str(params(runs[0]).get("epochs", "—")) if trained else "—"),
                Cell(_count(size.get("total"))), Cell(_count(size.get("trainable")))])
        blocks.append(Table(slug("cost", d), f"Cost per run on {d} (mean ± 95% CI over seeds; "
                            "per-seed lists in seed order)",
                            ["model", "wall s", "training s", "epochs run", "best epoch",
                             "epoch cap", "parameters", "trainable"], rows))
    if not any(card(r).get("parameters") for r in res.runs):
        blocks.append("Parameter counts are missing: these runs predate their recording in "
                      "the card (`parameters`); re-run the suite to fill them.")
    blocks += _training_curves(ctx)
    return Section("training", "Training and cost", blocks)


def _training_curves(ctx: Ctx) -> list:
    """Training loss and validation metric per epoch (mean over seeds) from ``result.json``."""
    res, metric = ctx.res, name(ctx.metric)
    panels = []
    for d in res.datasets:
        for key, label in (("train_loss", "training loss"), (f"valid_{ctx.metric}",
                                                               f"validation {metric}")):
            series = []
            for m in res.models:
                by_epoch: dict[int, list[float]] = {}
                for run in res.runs_of(d, m):
                    for row in train_info(run).get("history") or []:
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
                   f"training loss and validation {metric} per epoch, mean over seeds.")]


# -- sweeps --------------------------------------------------------------------------------------

def _sweeps(ctx: Ctx) -> Section:
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
        best_params = ", ".join(f"{k}={num(v)}" for k, v in sorted((s.get("best_params") or {})
                                                                    .items())) or "—"
        label = f"{s['model']} / {s.get('dataset', '')}".rstrip(" /")
        states = s.get("states") or {}
        n_trials = len(trials) or sum(states.values())
        n_done = len(done) or states.get("COMPLETE", 0)
        importances = ", ".join(f"{k} {v:.2f}" for k, v in sorted(
            (s.get("importances") or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:3])
        runs = ctx.res.runs_of(s.get("dataset", ""), s["model"]) if s.get("dataset") else \
            [r for r in ctx.res.runs if r.model == s["model"]]
        used = ("no runs in the tables" if not runs else
                "yes" if group_use(ctx.res, runs).tuned else "no: defaults")
        rows.append([Cell(str(s["model"])), Cell(str(s.get("dataset", ""))),
                     Cell(str(s.get("metric", data.get("objective", "valid ndcg@10")))),
                     Cell(str(n_trials)), Cell(str(n_done)),
                     Cell("—" if best is None else f"{best:.4f}"), Cell(best_params),
                     Cell(importances or "—"), Cell(used)])
        if done:
            xs, ys = [t.get("number", i) for i, t in enumerate(done)], [t["value"] for t in done]
            running = (np.maximum if maximize else np.minimum).accumulate(ys).tolist()
            panels.append(plots.Panel(label, [
                plots.Series("trial value", xs, ys, kind="points", style=style["trial value"]),
                plots.Series("best so far", xs, running, kind="step",
                             style=style["best so far"])]))
    blocks: list = [(f"Optuna studies on validation only (from `{ctx.res.sweep_path}`); the test "
                     "set is never used for selection. \"In the tables\": whether the runs this "
                     "report's tables show used the study's best configuration (`bench run "
                     f"--suite {ctx.res.name} --tuned` re-runs the suite with them).")]
    if data.get("final"):
        blocks.append(f"The sweep's own final seeded runs are in `{data['final'].get('summary')}`"
                      " (a separate results folder, not in these tables unless this report was "
                      "rendered from it).")
    blocks.append(Table("sweeps", "Sweep studies", [
        "model", "dataset", "objective", "trials", "complete", "best value", "best params",
        "top importances", "in the tables"], rows))
    if panels:
        blocks.append(Figure("sweeps", plots.line_panels(panels, "trial", "objective", True,
                                                         integer_x=True),
                             "Sweep histories: each complete trial's value and the best so far."))
    return Section("sweeps", title, blocks)


# -- provenance ----------------------------------------------------------------------------------

LONG_TEXT = 40  # a card value longer than this (a note, an encoder's description) gets a row


def _has_long(obj: dict) -> bool:
    return any((isinstance(v, str) and len(v) > LONG_TEXT) or
               (isinstance(v, dict) and _has_long(v)) for k, v in obj.items() if k != "probes")


def _flatten(obj: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Rows ``(path, value)`` of a nested card section: one row per section (each top-level
    one, and deeper ones holding a long text) with its short values as ``k=v``, a row of its
    own for each long text; probes are a table of their own, unset or empty values are left
    out."""
    rows, short = [], {}
    for k, v in sorted(obj.items()):
        if k == "probes" or empty(v):
            continue
        if isinstance(v, dict) and (not prefix or _has_long(v)):  # a row per top section
            rows += _flatten(v, f"{prefix}{k}.")
        elif isinstance(v, str) and len(v) > LONG_TEXT:
            rows.append((f"{prefix}{k}", v))
        else:
            short[k] = v
    return ([(prefix.rstrip("."), kv(short))] if short else []) + rows


def _probe_tables(content: dict, table_id: str) -> list[Table]:
    tables = []

    def visit(obj: dict, path: str) -> None:
        probes = obj.get("probes")
        if isinstance(probes, dict) and probes:
            rows = [[Cell(k), Cell(num(p.get("accuracy"))), Cell(num(p.get("chance"))),
                     Cell("yes" if p.get("control") else "no"),
                     Cell(f"{p.get('train_items', '—')} / {p.get('test_items', '—')}")]
                    for k, p in sorted(probes.items()) if isinstance(p, dict)]
            tables.append(Table(slug(table_id, path or "probes"),
                                f"Linear probes of the content features{f' ({path})' if path else ''}"
                                ": accuracy on cold items; control = an attribute the modality "
                                "should not carry",
                                ["probe", "accuracy", "chance", "control", "train / test items"],
                                rows, latex=False))
        for k, v in sorted(obj.items()):
            if isinstance(v, dict) and k != "probes":
                visit(v, f"{path}.{k}" if path else k)

    visit(content, "")
    return tables


def _provenance(ctx: Ctx) -> Section:
    res = ctx.res
    blocks: list = [("Where each result came from (BARS-style): an index of every run, then one "
                     "card per model and dataset (the fields its seeds share, a per-seed table, "
                     "the content its features come from with their linear probes, and the raw "
                     "card of its first seed behind a fold).")]
    index, cards = [], []
    for run in res.runs:
        p = card(run)
        if run.result is None:
            index.append([Cell(run.dataset), Cell(run.model), Cell(str(run.seed)),
                          Cell("result.json missing")] + [Cell("—")] * 5)
            continue
        code = p.get("code", {})
        commit = str(code.get("commit"))[:10] + (" (dirty)" if code.get("dirty") else "")
        index.append([Cell(x) for x in (
            run.dataset, run.model, str(run.seed), str(p.get("dataset", {}).get("content_hash"))[:12],
            str(p.get("split", {}).get("checksum"))[:12], str(p.get("config_hash")), commit,
            f"{p.get('wall_seconds', float('nan')):.1f}", str(p.get("mlflow_run_id")))])
    blocks.append(Table("provenance", "Every run (details in the cards below)",
                        ["dataset", "model", "seed", "data hash", "split checksum",
                         "config hash", "commit", "wall s", "MLflow run"], index, latex=False,
                        lead=3))
    for d in res.datasets:
        for m in ctx.models_of(d):
            cards.append(_card(ctx, d, m))
    return Section("provenance", "Provenance cards", blocks + cards)


def _card(ctx: Ctx, d: str, m: str) -> Card:
    res = ctx.res
    runs = sorted(res.runs_of(d, m), key=lambda r: r.seed)
    card_id, title = slug(d, m), f"{m} on {d}"
    done = [r for r in runs if r.result]
    if not done:
        return Card(card_id, title, [("result.json", "missing in "
                                      + ", ".join(str(r.run_dir) for r in runs))])
    p = card(done[0])
    ds, split, config = p.get("dataset", {}), p.get("split", {}), p.get("config", {})
    commits = sorted({str(card(r).get("code", {}).get("commit")) + (
        " (dirty)" if card(r).get("code", {}).get("dirty") else "") for r in done})
    size = p.get("parameters") or {}
    fields = [("dataset", f"{ds.get('name')} (content hash {ds.get('content_hash')})"),
              ("counts", kv(ds.get("counts"))), ("modality coverage", kv(ds.get("coverage"))),
              ("data findings", "; ".join(ds.get("findings") or []) or "none"),
              ("split", kv(split)), ("evaluation", kv(config.get("evaluation"))),
              ("configuration", group_use(res, runs).label),
              ("parameters", kv(config.get("params")) or "none")]
    if config.get("stage_params"):
        fields.append(("stage parameters", kv(config["stage_params"])))
    if config.get("perturbation"):
        fields.append(("perturbation", kv(config["perturbation"])))
    if p.get("tuning"):
        fields.append(("tuning", kv(p["tuning"])))
    content = p.get("content") or {}
    fields += [(f"content: {k}" if k else "content", v) for k, v in _flatten(content)] or \
        [("content", "none (the model reads no content features)")]
    if size:
        fields.append(("model size", (f"{_count(size.get('total'))} parameters, "
                                      f"{_count(size.get('trainable'))} trainable")))
    fields += [("code", ", ".join(commits)), ("packages", kv(p.get("packages"))),
               ("hardware", kv(p.get("hardware"))),
               ("MLflow tracking", str(p.get("tracking_uri")))]
    seeds = [[Cell(str(r.seed)), Cell(str(card(r).get("config_hash"))),
              Cell(f"{card(r).get('wall_seconds', float('nan')):.1f}"),
              Cell(str(train_info(r).get("epochs", "—"))),
              Cell(str(train_info(r).get("best_epoch", "—"))),
              Cell(str(card(r).get("mlflow_run_id")))] for r in done]
    tables = [Table(slug("seeds", d, m), f"Runs of {m} on {d}",
                    ["seed", "config hash", "wall s", "epochs", "best epoch", "MLflow run"],
                    seeds, latex=False)]
    tables += _probe_tables(content, slug("probes", d, m))
    raw = json.dumps(p, indent=1, sort_keys=True, default=str)
    return Card(card_id, title, fields, tables, raw)
