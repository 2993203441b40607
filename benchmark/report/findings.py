"""The report's Findings and Caveats, generated from the statistics and the cards only.

Every sentence is a function of numbers the report also shows in a table (the pairwise
comparisons, the diagnostics outcomes, the world check, the cards), so a reader can trace each
claim; nothing here is written by hand about a particular result.
"""

from __future__ import annotations

from .common import (
    Ctx,
    card,
    fmt_p,
    group_use,
    name,
    not_diagnosed,
    params,
    pm,
    share,
    ticks,
    train_info,
    verdicts,
)
from .significance import Comparison


def effect(c: Comparison) -> str:
    """``Δ = +0.0048 [95% CI +0.0012, +0.0083], d_z +0.06, Holm p 0.0031`` (Δ = model − other)."""
    return (f"Δ = {c.diff:+.4f} [95% CI {c.ci_low:+.4f}, {c.ci_high:+.4f}], d_z {c.dz:+.2f}, "
            f"Holm p {fmt_p(c.p_holm)}")


def _listing(comps: list[Comparison]) -> str:
    return "; ".join(f"`{c.reference}` ({effect(c)})" for c in comps)


def _versus(ctx: Ctx, dataset: str, model: str, others: list[str]
            ) -> tuple[list[Comparison], list[Comparison], list[Comparison]]:
    """``model`` against each of ``others``: (significantly higher, significantly lower, not
    significant), each sorted by Δ from the largest."""
    comps = [c for c in (ctx.pair(dataset, model, o) for o in others if o != model) if c]
    comps.sort(key=lambda c: -c.diff)
    alpha = ctx.opts.alpha
    return ([c for c in comps if c.significant(alpha) and c.diff > 0],
            [c for c in comps if c.significant(alpha) and c.diff < 0],
            [c for c in comps if not c.significant(alpha)])


def _test_means(ctx: Ctx, dataset: str) -> dict[str, tuple[float, str]]:
    return {m: pm([r.row["test"][ctx.metric] for r in ctx.res.runs_of(dataset, m)])
            for m in ctx.models_of(dataset)}


def findings(ctx: Ctx) -> list[str]:
    """Bullets: the best model, the reference against every other model, the trained models
    against the strongest floor, modality collapse, the world check."""
    res, metric, alpha = ctx.res, name(ctx.metric), ctx.opts.alpha
    out = [(f"Statistics: test {metric} per user averaged over seeds, paired over users; Δ = "
            "first-named model − other model (positive: the first-named model scores higher); "
            "\"significant\" means both the t-test and the permutation test reject after Holm "
            f"correction over all {len(ctx.pairs)} pairwise comparisons (α = {alpha}); the Holm "
            "p quoted is the larger of the two.")]
    for d in res.datasets:
        models = ctx.models_of(d)
        means = _test_means(ctx, d)
        where = f" on `{d}`" if len(res.datasets) > 1 else ""
        top = max(models, key=lambda m: means[m][0])
        higher, lower, same = _versus(ctx, d, top, models)
        text = (f"Highest mean test {metric}{where}: `{top}` ({means[top][1]} over "
                f"{len(res.runs_of(d, top))} seed(s)).")
        if ctx.pairs:
            text += (" It is significantly higher than every other model." if not same
                     else f" Not significantly different from {ticks([c.reference for c in same])}"
                     f"; significantly higher than {len(higher)} of {len(models) - 1} models.")
        out.append(text)
        ref = ctx.reference
        if ref in models and len(models) > 1:
            higher, lower, same = _versus(ctx, d, ref, models)
            if higher:
                out.append(f"`{ref}` (the reference) is significantly higher{where} than: "
                           f"{_listing(higher)}.")
            if lower:
                out.append(f"`{ref}` (the reference) is significantly lower{where} than: "
                           f"{_listing(lower)}.")
            if same:
                out.append(f"`{ref}` (the reference) shows no significant difference{where} "
                           f"from: {_listing(same)}.")
        floors = ctx.floors(d)
        trained = [m for m in ctx.recommenders(d) if train_info(res.runs_of(d, m)[0])]
        if floors and trained:
            floor = max(floors, key=lambda m: means[m][0])
            above = [m for m in trained if (c := ctx.pair(d, m, floor)) and c.significant(alpha)
                     and c.diff > 0]
            below = [m for m in trained if (c := ctx.pair(d, m, floor)) and c.significant(alpha)
                     and c.diff < 0]
            head = (f"Against the strongest floor{where}, `{floor}` ({metric} "
                    f"{means[floor][1]}): ")
            if above:
                head += (f"{len(above)} of {len(trained)} trained models score significantly "
                         f"higher ({ticks(above)})")
            else:
                head += f"no trained model scores significantly higher than `{floor}`"
            head += (f"; {len(below)} score significantly lower ({ticks(below)})." if below
                     else "; none scores significantly lower.")
            out.append(head)
    out += _collapse_findings(ctx)
    out += _world_findings(ctx)
    return out


def _who(v: dict, several_datasets: bool) -> str:
    return f"`{v['model']}`" + (f" on `{v['dataset']}`" if several_datasets and v["dataset"]
                                 else "")


def _evidence(v: dict) -> str:
    """``image contribution +0.0% [+0.0%, +0.0%], Holm p 1.0000; text ...`` (the verdict
    table's numbers)."""
    parts = []
    for mod, e in v["modalities"].items():
        text = f"{mod} contribution {share(e.get('contribution_mean'), e.get('contribution_ci'))}"
        if e.get("p_holm") is not None:
            text += f", Holm p {fmt_p(e['p_holm'])}"
        parts.append(text)
    return "; ".join(parts)


def _collapse_findings(ctx: Ctx) -> list[str]:
    """One bullet with every model's outcome, then one per model whose outcome is a collapse
    onto one modality or a modality that hurts, with its evidence."""
    data = ctx.res.diagnostics
    if data is None:
        return [("Modality use was not diagnosed (no `diagnostics.json`: run "
                 f"`bench diagnose --suite {ctx.res.name}`).")]
    found = verdicts(data)
    if not found:
        return ["Modality use: no model could be diagnosed (see the diagnostics section)."]
    several = len(ctx.res.datasets) > 1
    by_outcome: dict[str, list[str]] = {}
    for v in found:
        by_outcome.setdefault(v["outcome"], []).append(_who(v, several))
    metric = name(data.get("metric", "ndcg@10"))
    cell = ("its cell's" if "verdicts" in data else "the overall")
    out = [(f"Modality use (`bench diagnose`, each model's verdict over its seeds; contribution "
            f"= share of {cell} {metric} lost without the modality, signed, with its 95% CI over "
            "seeds): " + "; ".join(f"{o}: {', '.join(ms)}" for o, ms in by_outcome.items())
            + ".")]
    for v in found:
        if v["outcome"].startswith("collapsed onto") or "hurt" in v["outcome"]:
            given = ("" if v.get("given") is None else
                     f"; given {' and '.join(v['given']) or 'no content modality'}")
            out.append(f"{_who(v, several)}: {v['outcome']} (status {v['status']}{given}; "
                       f"{len(v['seeds'])} seed(s)): {_evidence(v)}.")
    return out


def _world_findings(ctx: Ctx) -> list[str]:
    out = []
    for label, doc in (ctx.res.world_check or {}).items():
        c = doc["counts"]
        failed = [e for e in doc["expectations"] if e["status"] == "fail"]
        text = (f"World check on `{label}` ({name(doc['metric'])}): {c['pass']} of "
                f"{sum(c.values())} expectations pass, {c['fail']} fail, {c['skipped']} "
                "skipped.")
        if failed:
            text += " Failed: " + "; ".join(f"\"{e['claim']}\" ({e.get('reason', '')})"
                                           for e in failed) + "."
        out.append(text)
    return out


# -- caveats -------------------------------------------------------------------------------------

def _walk(obj, path=()):
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from _walk(v, (*path, k))


def caveats(ctx: Ctx) -> list[str]:
    """Bullets from the cards, the sweep, the world check and the diagnostics: what limits the
    numbers."""
    res = ctx.res
    out: list[str] = []
    stand_ins: dict[str, list[str]] = {}
    encoders: dict[str, dict[str, list[str]]] = {}  # encoder -> model -> content paths
    for m in res.models:
        run = next((r for r in res.runs if r.model == m and r.result), None)
        if run is None:
            continue
        notes = []
        for path, obj in _walk(card(run).get("content") or {}):
            if obj.get("stand_in"):
                notes.append(obj.get("stand_in_note") or
                             f"a stand-in ({obj.get('stand_in_kind', 'unnamed kind')})")
            if isinstance(obj.get("encoder"), str):
                encoders.setdefault(obj["encoder"], {}).setdefault(m, []).append(".".join(path))
        # a model and the stage it embeds carry the same stand-in: say it once, with its note
        for note in dict.fromkeys(n for n in notes if not n.startswith("a stand-in (")) or \
                dict.fromkeys(notes):
            stand_ins.setdefault(str(note), []).append(m)
    for note, models in stand_ins.items():
        out.append(f"Stand-in backbone for {ticks(models)}: {note}")
    for enc, users in encoders.items():
        out.append(f"Content encoder \"{enc}\" feeds " + ", ".join(
            f"`{m}` ({', '.join(paths)})" for m, paths in users.items()) + ".")
    out += _budget_caveats(ctx)
    out += _diagnostics_caveats(ctx)
    out += _config_caveats(ctx)
    for label, doc in (res.world_check or {}).items():
        failed = [e for e in doc["expectations"] if e["status"] == "fail"]
        if failed:
            out.append(f"{len(failed)} world-check expectation(s) failed on `{label}`, so the "
                       "world or the models do not behave as designed there: "
                       + "; ".join(f"\"{e['claim']}\"" for e in failed) + ".")
    seeds = sorted({r.seed for r in res.runs})
    if len(seeds) < 3:
        out.append(f"Only {len(seeds)} seed(s): the 95% intervals over seeds are wide or "
                   "undefined (± 0 with one seed).")
    modes = {card(r).get("config", {}).get("evaluation", {}).get("mode") for r in res.runs}
    if "sampled" in modes:
        out.append("Sampled evaluation (a compatibility mode): metrics rank each target among "
                   "sampled negatives, not all items, and are not comparable with full ranking.")
    commits = sorted({str(card(r).get("code", {}).get("commit")) for r in res.runs
                      if r.result})
    dirty = [r for r in res.runs if card(r).get("code", {}).get("dirty")]
    if len(commits) > 1:
        out.append(f"The runs come from {len(commits)} code versions: "
                   + ", ".join(c[:10] for c in commits) + ".")
    if dirty:
        out.append(f"{len(dirty)} run(s) ran from a checkout with uncommitted changes (dirty).")
    if res.failed:
        out.append(f"{len(res.failed)} run(s) did not complete and are left out.")
    return out


def _diagnostics_caveats(ctx: Ctx) -> list[str]:
    """What limits the modality verdicts: an old-rule file, inconclusive or one-seed verdicts,
    models not diagnosed."""
    data = ctx.res.diagnostics
    if data is None:
        return []
    out = []
    if "verdicts" not in data:
        out.append("The modality verdicts come from a schema-1 `diagnostics.json` (the earlier "
                   "rule: contributions clamped at 0 on all test cases, a fixed threshold, no "
                   "test, a verdict per seed): rerun `bench diagnose --suite "
                   f"{ctx.res.name}` for verdicts with evidence.")
    found = verdicts(data)
    several = len(ctx.res.datasets) > 1
    for v in found:
        why = []
        for mod, e in v["modalities"].items():
            if e.get("state") != "inconclusive":
                continue
            if not e.get("n_users"):
                why.append(f"{mod}: no test case on {e.get('cell')}")
                continue
            # the rule reads the interval of the difference (docs/robustness.md), so quote it;
            # the contribution's interval can exclude 0 while the difference's does not
            lo, hi = e.get("difference_ci") or (None, None)
            interval = (f"[{lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None
                        else "not available")
            why.append(f"{mod}: Holm p {fmt_p(e.get('p_holm'))} over {e['n_users']} users, "
                       f"difference clean − without over seeds {interval} NDCG@10 (contribution "
                       f"{share(e.get('contribution_mean'), e.get('contribution_ci'))})")
        if why:  # a hurting modality takes precedence in the outcome: say it either way
            out.append(f"Inconclusive evidence for {_who(v, several)} (outcome: {v['outcome']}): "
                       "the test over users and the interval over seeds disagree ("
                       + "; ".join(why) + "); more seeds or users would decide.")
    one = [_who(v, several) for v in found if len(v["seeds"]) == 1 and "verdicts" in data]
    if one:
        out.append(f"Modality verdicts from one seed ({', '.join(one)}): the paired test over "
                   "users alone decides; training noise is not measured.")
    skipped: dict[str, list[str]] = {}
    for e in data["models"]:
        if not_diagnosed(e):
            skipped.setdefault(_who({"model": e["model"], "dataset": e.get("dataset", "")},
                                    several), []).append(str(e.get("seed", "?")))
    if skipped:
        out.append("Not diagnosed (the dropout perturbations do not reach the model): "
                   + "; ".join(f"{m} (seed {', '.join(s)})" for m, s in skipped.items()) + ".")
    return out


def _budget_caveats(ctx: Ctx) -> list[str]:
    """Trained models whose best validation epoch was their last one, at the epoch cap: the
    budget stopped them while they were still at their best (maybe still improving)."""
    capped = []
    for d in ctx.res.datasets:
        for m in ctx.models_of(d):
            runs = ctx.res.runs_of(d, m)
            hits = [r for r in runs if (t := train_info(r)).get("epochs")
                    and (cap := params(r).get("epochs")) and t["epochs"] >= cap
                    and t.get("best_epoch") == t["epochs"] - 1]
            if hits:
                cap = params(hits[0]).get("epochs")
                capped.append(f"`{m}` (cap {cap} epoch{'s' if cap != 1 else ''}, "
                              f"{len(hits)} of {len(runs)} seed(s))")
    if not capped:
        return []
    return [("Best validation epoch = the last one allowed by the epoch cap: "
             + ", ".join(capped) + ". The budget stopped these models at their best so far, so "
             "it, not the model, may limit their accuracy (with a 1-epoch cap nothing shows "
             "whether more training would help).")]


def _config_caveats(ctx: Ctx) -> list[str]:
    res = ctx.res
    if res.sweep is None:
        return [("Every row uses its default configuration (the registry's defaults under the "
                 "suite's preset and parameters): no sweep was found for this suite, so no "
                 f"model was tuned (`bench sweep --suite {res.name}`).")]
    tuned, default = [], []
    for d in res.datasets:
        for m in ctx.models_of(d):
            use = group_use(res, res.runs_of(d, m))
            (tuned if use.tuned else default).append(f"`{m}` ({use.label})")
    text = (f"A sweep exists (`{res.sweep_path}`). The tables use the sweep's best validation "
            f"configuration for: {', '.join(tuned) or 'no model'}; the default configuration "
            f"for: {', '.join(default) or 'no model'}.")
    if any("sweep best not used" in x for x in default):
        text += (f" Re-run with the swept configurations: `bench run --suite {res.name} "
                 "--tuned`.")
    return [text]

