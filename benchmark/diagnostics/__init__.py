"""Modality diagnostics: the modality-dropout test with evidence, a verdict per trained model,
cross-modal topology, embedding health and training series (docs/robustness.md defines every
term).

**Modality-dropout test.** Each trained run is evaluated clean and with every image removed
(``drop_image@1``) and every text removed (``drop_text@1``), through :mod:`benchmark.robustness`
(per-case ranks in its ``.npz`` files). A modality is judged on the test cases that need it: on
a controlled-modality world (case label ``signal``) the image on ``signal=visual,target=cold``
and the text on ``signal=textual,target=cold`` (cold-start ranks: only content can rank a
never-trained item); elsewhere on all test cases (``overall``).

**Contribution** of a modality, signed and never clamped: ``(clean - without) / clean`` on its
cell; negative when removing the modality raises the score; None when ``clean`` is 0.

**Evidence and rule** (:func:`modality_evidence`, :func:`modality_state`,
:func:`collapse_verdict`). Per modality, ``d_u`` = clean minus without of user ``u``'s case
metric (one case per user), averaged over seeds: the paired t-test and the sign-flip permutation
test of :mod:`benchmark.report.significance` over users, Holm-corrected over the two modalities;
*significant* when both tests reject at ``alpha`` (default 0.05) after Holm, as in the report.
With two or more seeds, the 95% t-interval over seeds of the per-seed mean difference
(:func:`benchmark.stats.mean_ci`) must agree:

- ``used``: significant, mean difference > 0 and the seed interval above 0;
- ``hurts``: significant, mean difference < 0 and the seed interval below 0;
- ``none`` (no effect detected): not significant and the seed interval contains 0;
- ``inconclusive``: the test and the seed interval disagree.

With one seed the paired test alone decides (``used``, ``hurts`` or ``none``); training noise is
then not measured, and the verdict says so. Outcome of a model: any modality ``hurts`` ->
``images hurt`` / ``text hurts`` / ``images and text hurt``; else any ``inconclusive`` ->
``inconclusive``; both ``used`` -> ``uses both``; one ``used``, the other ``none`` -> ``collapsed
onto image|text``; both ``none`` -> ``content ignored``. Status: ``pass`` for ``uses both`` and
for ``content ignored`` by a model given no content modality; ``fail`` for a collapse onto one
modality of a model given both and for a modality that hurts a model given it; ``warn``
otherwise (a collapse by design, content ignored by a content model, inconclusive).

**diagnostics.json** (schema 2; version-1 files have no ``schema``, ``verdicts`` or
``evidence``)::

    {"suite", "schema": 2, "step", "metric", "alpha",
     "verdicts": [                      # one per (dataset, model): the verdict over its seeds
        {"model", "dataset", "seeds", "given": [modalities], "outcome", "status", "verdict",
         "modalities": {"image" | "text": EVIDENCE}}],
     "models": [                        # one per (dataset, model, seed), as in version 1
        {"model", "dataset", "seed", "outcome", "status", "verdict" (this seed alone),
         "evidence": {"image" | "text": EVIDENCE of this seed},
         "metrics": {name: number}, "series": {name: [values]}, "training": {...}}]}

    EVIDENCE = {"cell", "n_users", "seeds", "clean": [per seed], "without": [per seed],
                "clean_mean", "without_mean", "contribution": [per seed, null if clean is 0],
                "contribution_mean", "contribution_ci": [low, high] over seeds (null: one seed),
                "difference_mean", "difference_ci": [low, high] over seeds (null: one seed),
                "user_ci": [low, high] (bootstrap over users of the seed-averaged difference),
                "p_ttest", "p_permutation" (seed-averaged, uncorrected), "p_holm" (the larger
                of the two Holm-corrected p-values: significant iff <= alpha),
                "p_holm_seeds": [per seed, the same test on that seed alone], "state"}

A seed's ``metrics`` keep the version-1 names: ``clean_<metric>``, ``no_image_<metric>``,
``no_text_<metric>`` (all test cases), and ``image_contribution`` / ``text_contribution`` (now
signed, on the modality's cell), plus ``image_p_holm`` / ``text_p_holm`` and the table measures.

**Topology agreement** of a model's image-only and text-only item representations (the content
features it declares, or its own unimodal tables, ``model.modality_tables()``, for a model that
reads raw content such as VLM2Rec): linear CKA (Kornblith et al. 2019) and the symmetric KL of
relational distributions (the CRTR loss of :mod:`methods.vlm2rec.losses`). **Structure
contribution**: linear CKA between the model's fused item table and each modality's table.
**Embedding health** of each table: effective rank (Roy & Vetterli 2007), and the alignment and
uniformity of Wang & Isola (2020). **Training series** of a model that records per-step
diagnostics (VLM2Rec, its run's ``train_steps.json``): ``p_text`` / ``p_image``, ``rho``,
``beta``, ``grad_text`` / ``grad_image``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..errors import ConfigError, DataError
from ..io import atomic_write_json

log = logging.getLogger(__name__)

SCHEMA = 2  # of diagnostics.json (module docstring); version-1 files have no "schema"
ALPHA = 0.05
METRIC = "ndcg@10"
MODALITIES = ("image", "text")
#: the cell each modality is judged on in a controlled-modality world (docs/synthetic.md): the
#: cold cases its signal generated, where no ID embedding can help
CELLS = {"image": "signal=visual,target=cold", "text": "signal=textual,target=cold"}
OVERALL = "overall"
STATES = ("used", "hurts", "none", "inconclusive")
#: what removing each modality is called in outcomes and sentences
_PLURAL = {"image": "images", "text": "text"}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same n items (rows)."""
    x = np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64).mean(0)
    y = np.asarray(y, dtype=np.float64) - np.asarray(y, dtype=np.float64).mean(0)
    cross = np.linalg.norm(x.T @ y, "fro") ** 2
    den = np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")
    return float(cross / den) if den > 0 else 0.0


def effective_rank(x: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) (Roy & Vetterli 2007)."""
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    s = s[s > 1e-12]
    if len(s) == 0:
        return 0.0
    p = s / s.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: mean ||f(x) - f(y)||^alpha over positive pairs (rows)."""
    return float((np.linalg.norm(_normalise(x) - _normalise(y), axis=1) ** alpha).mean())


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: log mean exp(-t ||f(a) - f(b)||^2) over distinct pairs."""
    z = _normalise(x)
    n = len(z)
    if n < 2:
        return 0.0
    sq = np.maximum(2.0 - 2.0 * (z @ z.T), 0.0)[~np.eye(n, dtype=bool)]
    m = (-t * sq).max()
    return float(m + math.log(np.exp(-t * sq - m).mean()))


def relational_kl(x: np.ndarray, y: np.ndarray, tau: float = 0.1) -> float:
    """Symmetric KL of the two modalities' relational distributions (VLM2Rec's CRTR)."""
    import torch

    from methods.vlm2rec.losses import crtr

    return float(crtr(torch.as_tensor(np.asarray(x, dtype=np.float32)),
                      torch.as_tensor(np.asarray(y, dtype=np.float32)), tau))


def contribution(clean: float, without: float) -> float | None:
    """Signed share of the clean accuracy lost when a modality is removed,
    ``(clean - without) / clean``: negative when removing it raises the score; None when the
    clean accuracy is 0 (no share to speak of)."""
    return (clean - without) / clean if clean > 0 else None


def modality_cell(modality: str, groups) -> str:
    """The cases a modality is judged on: its signal's cold cell when the evaluation has one
    (a controlled-modality world), else every test case (``overall``)."""
    cell = CELLS[modality]
    return cell if cell in groups else OVERALL


def cell_values(arrays, mask: np.ndarray | None, cell: str, metric: str = METRIC) -> np.ndarray:
    """Per-case ``metric`` on ``cell`` from stored test arrays (``EvalResult.arrays()``: keys
    ``test_ranks``, ``test_ties``, ``test_cold_ranks``, ``test_cold_ties``); a cold cell is
    scored on the cold-start ranks, as the evaluator scores it."""
    from ..evaluation import METRICS, case_metrics

    name, _, k = metric.partition("@")
    if name not in METRICS or not k.isdigit():
        raise ConfigError(f"metric {metric!r} must be one of {', '.join(METRICS)} at a cutoff, "
                          "e.g. ndcg@10")
    prefix = "test_cold_" if cell.endswith("target=cold") else "test_"
    missing = [f"{prefix}{x}" for x in ("ranks", "ties") if f"{prefix}{x}" not in arrays]
    if missing:
        raise DataError(f"stored ranks lack {', '.join(missing)} (written by an older version): "
                        "rerun `bench robustness` / `bench diagnose`")
    ranks, ties = arrays[f"{prefix}ranks"], arrays[f"{prefix}ties"]
    if mask is not None:
        ranks, ties = ranks[mask], ties[mask]
    return case_metrics(ranks, (int(k),), ties)[metric]


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def seed_interval(values: list[float]) -> list[float] | None:
    """[low, high] of the 95% t-interval over seeds; None with fewer than two values."""
    from ..stats import mean_ci

    if len(values) < 2:
        return None
    mean, half = mean_ci(values)
    return [mean - half, mean + half]


def modality_state(significant: bool, difference: float,
                   seed_interval: list[float] | None) -> str:
    """``used`` / ``hurts`` / ``none`` / ``inconclusive`` of one modality from the paired test
    over users (``significant``, the mean ``difference`` clean - without) and the interval over
    seeds of the per-seed difference (None: one seed, the test alone decides)."""
    if seed_interval is None:
        if not significant:
            return "none"
        return "used" if difference > 0 else "hurts"
    low, high = seed_interval
    if significant and difference > 0 and low > 0:
        return "used"
    if significant and difference < 0 and high < 0:
        return "hurts"
    if not significant and low <= 0 <= high:
        return "none"
    return "inconclusive"  # the test over users and the spread over seeds disagree


def modality_evidence(cases: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]],
                      cells: dict[str, str] | None = None, alpha: float = ALPHA,
                      n_resamples: int | None = None) -> dict[str, dict]:
    """The evidence for each modality (see the module docstring, EVIDENCE) from
    ``cases[modality][seed] = (clean, without)``: per-case metric vectors on the modality's
    cell, aligned by user (the same cases in every seed). ``cells`` names the cells (for the
    record only)."""
    from ..report import significance as sig

    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    n_resamples = n_resamples or sig.N_RESAMPLES
    mods = [m for m in MODALITIES if m in cases]
    if not mods:
        raise ValueError("modality_evidence needs the cases of image and/or text")
    seeds = sorted(set.intersection(*(set(cases[m]) for m in mods)))
    if not seeds:
        raise ValueError("modality_evidence: no seed has the cases of every modality")
    for m in mods:
        for s in seeds:
            a, b = cases[m][s]
            if np.shape(a) != np.shape(b) or np.shape(a) != np.shape(cases[m][seeds[0]][0]):
                raise ValueError(f"{m}, seed {s}: clean and without cases are not aligned")

    def tested(pairs: dict[str, tuple]) -> dict[str, tuple]:
        """Paired tests per modality, Holm over the modalities: (p_t, p_perm, p_holm, cmp);
        a modality without cases gets (None, None, None, None) and is not counted."""
        filled = {m: ab for m, ab in pairs.items() if len(ab[0])}
        comps = sig.correct([sig.compare("", m, "without", np.asarray(a, float),
                                         np.asarray(b, float), n_resamples)
                             for m, (a, b) in filled.items()])
        done = {m: (c.p_t, c.p_perm, max(c.p_t_holm, c.p_perm_holm), c)
                for m, c in zip(filled, comps)}
        return {m: done.get(m, (None, None, None, None)) for m in pairs}

    per_seed = {s: tested({m: cases[m][s] for m in mods}) for s in seeds}
    pooled = tested({m: (np.mean([cases[m][s][0] for s in seeds], axis=0),
                         np.mean([cases[m][s][1] for s in seeds], axis=0)) for m in mods})
    out = {}
    for m in mods:
        clean = [float(np.mean(cases[m][s][0])) if len(cases[m][s][0]) else None
                 for s in seeds]
        without = [float(np.mean(cases[m][s][1])) if len(cases[m][s][1]) else None
                   for s in seeds]
        diffs = [c - w for c, w in zip(clean, without) if c is not None]
        contribs = [contribution(c, w) if c is not None else None
                    for c, w in zip(clean, without)]
        known = [c for c in contribs if c is not None]
        p_t, p_perm, p_holm, comp = pooled[m]
        n = len(cases[m][seeds[0]][0])
        seed_ci = seed_interval(diffs) if n else None
        # no case on the cell: nothing can be said
        state = (modality_state(p_holm <= alpha, comp.diff, seed_ci) if n
                 else "inconclusive")
        out[m] = {"cell": (cells or {}).get(m), "n_users": n, "seeds": seeds,
                  "clean": clean, "without": without,
                  "clean_mean": _mean(clean), "without_mean": _mean(without),
                  "contribution": contribs,
                  "contribution_mean": float(np.mean(known)) if known else None,
                  "contribution_ci": seed_interval(known) if len(known) == len(seeds) else None,
                  "difference_mean": _mean(diffs), "difference_ci": seed_ci,
                  "user_ci": [comp.ci_low, comp.ci_high] if comp else None,
                  "p_ttest": p_t, "p_permutation": p_perm, "p_holm": p_holm,
                  "p_holm_seeds": [per_seed[s][m][2] for s in seeds], "state": state}
    return out


def collapse_verdict(evidence: dict[str, dict], declared: tuple[str, ...] | None = None,
                     metric: str = METRIC) -> tuple[str, str, str]:
    """(outcome, status, sentence) from :func:`modality_evidence` (rule in the module
    docstring). ``declared``: the modalities the model is given (None: image and text)."""
    declared = ("image", "text") if declared is None else tuple(
        m for m in declared if m in MODALITIES)
    for m in evidence:
        if m not in MODALITIES:
            raise ValueError(f"unknown modality {m!r} in the evidence")
    states = {m: evidence[m]["state"] if m in evidence else "none" for m in MODALITIES}
    hurt = [m for m in MODALITIES if states[m] == "hurts"]
    used = [m for m in MODALITIES if states[m] == "used"]
    if hurt:
        outcome = {("image",): "images hurt", ("text",): "text hurts"}.get(
            tuple(hurt), "images and text hurt")
        status = "fail" if set(hurt) & set(declared) else "warn"
    elif "inconclusive" in states.values():
        outcome, status = "inconclusive", "warn"
    elif len(used) == 2:
        outcome, status = "uses both", "pass"
    elif used:
        lost = next(m for m in MODALITIES if m not in used)
        outcome = f"collapsed onto {used[0]}"
        status = "fail" if lost in declared else "warn"
    else:
        outcome, status = "content ignored", "warn" if declared else "pass"
    parts = [_evidence_sentence(m, evidence[m], metric) for m in MODALITIES if m in evidence]
    given = ("given " + " and ".join(declared) if declared else "given no content modality")
    seeds = next(iter(evidence.values()))["seeds"] if evidence else []
    noise = (f"{len(seeds)} seeds" if len(seeds) > 1
             else "one seed: paired test over users only, training noise not measured")
    return outcome, status, f"{outcome} ({given}; {noise}): " + "; ".join(parts)


def _evidence_sentence(modality: str, e: dict, metric: str) -> str:
    if not e["n_users"]:
        return f"{modality} inconclusive: no test case on {e.get('cell') or 'the cell'}"
    c = e.get("contribution_mean")
    ci = e.get("contribution_ci")
    share = "n/a (clean is 0)" if c is None else f"{c:+.0%}"
    if c is not None and ci is not None:
        share += f" [{ci[0]:+.0%}, {ci[1]:+.0%}]"
    # the rule reads the interval of the difference, not of the contribution: quote it too
    diff = e.get("difference_ci")
    over_seeds = (f"difference over seeds [{diff[0]:+.4f}, {diff[1]:+.4f}]; "
                  if diff is not None and None not in diff else "")
    return (f"{modality} {e['state']}: without {_PLURAL[modality]} {metric} "
            f"{e['clean_mean']:.4f} -> {e['without_mean']:.4f} on {e.get('cell') or 'the cases'} "
            f"(contribution {share}; {over_seeds}paired test over {e['n_users']} users, "
            f"Holm p = {e['p_holm']:.2g})")


def feature_diagnostics(features: dict, max_items: int = 2000,
                        fused: np.ndarray | None = None) -> dict[str, float]:
    """Topology agreement and health of a model's image and text item tables
    (``ModalityFeatures``); with the model's ``fused`` item table (rows by item id), the CKA of
    that table with each modality's (``cka_fused_<m>``, on the items that have the modality)."""
    out: dict[str, float] = {}
    tables = {m: f for m, f in features.items() if m in ("image", "text")}
    if fused is not None:
        for m, f in tables.items():
            rows = np.flatnonzero(f.present)[:max_items]
            if len(rows) >= 3:
                out[f"cka_fused_{m}"] = linear_cka(fused[rows], f.values[rows])
    for m, f in tables.items():
        x = f.values[f.present][:max_items]
        if len(x) >= 2:
            out[f"{m}_effective_rank"] = effective_rank(x)
            out[f"{m}_uniformity"] = uniformity(x)
    if len(tables) == 2:
        both = tables["image"].present & tables["text"].present
        xi = tables["image"].values[both][:max_items]
        xt = tables["text"].values[both][:max_items]
        if len(xi) >= 3:
            out["cka_image_text"] = linear_cka(xi, xt)
            out["relational_kl_image_text"] = relational_kl(xt, xi)
            if xi.shape[1] == xt.shape[1]:
                out["alignment_image_text"] = alignment(xi, xt)
    return out


#: the per-step training diagnostics copied from a run's ``train_steps.json``
TRAINING_SERIES = ("p_text", "p_image", "rho", "beta", "grad_text", "grad_image")


def training_series(run_dir) -> dict[str, list]:
    """``{"step": [...], name: [value or None, ...]}`` from a run's per-step log ({} if none)."""
    from ..io import read_json
    from ..lifecycle import STEPS_FILE

    path = run_dir / STEPS_FILE
    if not path.is_file():
        return {}
    steps = read_json(path)["steps"]
    out = {"step": [int(r["step"]) for r in steps]}
    for name in TRAINING_SERIES:
        values = [r.get(name) for r in steps]
        values = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
                  for v in values]
        if any(v is not None for v in values):
            out[name] = values
    return out if len(out) > 1 else {}


def model_tables(suite, prep, model_name: str, seed: int, opts) -> dict[str, float]:
    """Topology, structure and health measures of a trained run's item tables: its declared
    content features, or its own unimodal tables (capability ``modality_tables``), against the
    fused item table it scores with (capability ``item_table``)."""
    import torch

    from ..contract import capabilities
    from ..encoders import prepare_features
    from ..lifecycle import default_cache_dir
    from ..robustness import load_trained

    mspec = suite.spec(model_name)
    if not (mspec.features or capabilities(mspec.load()).modality_tables):
        return {}
    handle = load_trained(suite, prep, model_name, seed, None, opts)
    model = handle.model
    with torch.no_grad():
        if handle.caps.modality_tables:
            tables = model.modality_tables()
        else:
            tables = prepare_features(prep.data, prep.split,
                                      {m: handle.params[p] for m, p in mspec.features.items()},
                                      opts.cache_dir or default_cache_dir(),
                                      device=opts.device, seed=seed)
        fused = (model.item_table().detach().float().cpu().numpy()
                 if handle.caps.item_table else None)
    from ..encoders.probes import probe_features, probe_metrics

    return {**feature_diagnostics(tables, fused=fused),
            **probe_metrics(probe_features(prep.data, prep.split, tables))}


def _stored_arrays(rows: list[dict], suite_dir, key: tuple, perturbation: str,
                   rate: float) -> dict | None:
    """The per-case test arrays of a robustness row (the latest one), or None."""
    hits = [r for r in rows if (r.get("dataset"), r["model"], r.get("seed")) == key
            and r["perturbation"] == perturbation and float(r["rate"]) == rate and r.get("ranks")]
    if not hits:
        return None
    with np.load(suite_dir / hits[-1]["ranks"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["metrics"] = hits[-1]["metrics"]
    return arrays


def _finite(evidence: dict) -> dict:
    """JSON-safe evidence (NaN -> None)."""
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return {m: {k: fix(v) for k, v in e.items()} for m, e in evidence.items()}


def verdict_entry(model: str, dataset: str, cases: dict, cells: dict[str, str] | None,
                  declared: tuple[str, ...], alpha: float = ALPHA, metric: str = METRIC,
                  n_resamples: int | None = None) -> dict:
    """A ``verdicts`` entry of diagnostics.json (schema in the module docstring): the verdict
    and evidence of ``model`` on ``dataset`` from ``cases`` as :func:`modality_evidence` takes
    them (one seed or several); ``declared``: the modalities the model is given."""
    evidence = _finite(modality_evidence(cases, cells, alpha, n_resamples))
    outcome, status, verdict = collapse_verdict(evidence, declared, metric)
    return {"model": model, "dataset": dataset,
            "seeds": next(iter(evidence.values()))["seeds"], "given": list(declared),
            "outcome": outcome, "status": status, "verdict": verdict, "modalities": evidence}


def seed_entry(one_seed: dict, overall: tuple[float, float, float],
               metric: str = METRIC) -> dict:
    """A ``models`` entry of diagnostics.json: one seed's verdict (:func:`verdict_entry` on that
    seed's cases) with its measures; ``overall``: ``metric`` on all test cases clean, without
    images and without text. The caller adds the table measures and the training series."""
    (seed,) = one_seed["seeds"]
    metrics = {f"clean_{metric}": overall[0], f"no_image_{metric}": overall[1],
               f"no_text_{metric}": overall[2]}
    for m, e in one_seed["modalities"].items():
        if e["contribution_mean"] is not None:
            metrics[f"{m}_contribution"] = e["contribution_mean"]
        if e["p_holm"] is not None:
            metrics[f"{m}_p_holm"] = e["p_holm"]
    return {"model": one_seed["model"], "dataset": one_seed["dataset"], "seed": seed,
            "outcome": one_seed["outcome"], "status": one_seed["status"],
            "verdict": one_seed["verdict"], "evidence": one_seed["modalities"],
            "metrics": metrics,
            "series": {f"test {metric} (both, no image, no text)": list(overall)},
            "training": {}}


def diagnostics_document(suite: str, verdicts: list[dict], entries: list[dict],
                         metric: str = METRIC, alpha: float = ALPHA) -> dict:
    """The diagnostics.json document (schema 2, in the module docstring)."""
    return {"suite": suite, "schema": SCHEMA, "step": "condition", "metric": metric,
            "alpha": alpha, "verdicts": verdicts, "models": entries}


def run_diagnostics(suite, opts, metric: str = METRIC, alpha: float = ALPHA,
                    tables: bool = True) -> dict:
    """The modality-dropout test (through :mod:`benchmark.robustness`), the verdicts with their
    evidence (per seed and over seeds), the table measures (unless ``tables`` is False: they
    reload every run and fit probes, most of the cost when nothing needs training) and training
    series of every run of a suite; writes ``<suite>/diagnostics.json`` (schema in the module
    docstring)."""
    from ..evaluation import case_groups
    from ..robustness import run_folder, run_robustness
    from ..runner import prepare_dataset
    from ..worldcheck import suite_model_info

    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    out = run_robustness(suite, ["drop_image", "drop_text"], [0.0, 1.0], opts)
    rows, suite_dir = out["rows"], opts.results_dir / suite.name
    info = suite_model_info(suite)  # a variant's own modalities (e.g. a text-only CLIP-SASRec)
    entries, verdicts = [], []
    for entry in suite.datasets:
        prep = prepare_dataset(entry, suite, opts)
        test = prep.split.test
        groups = case_groups(prep.split, prep.split.train_item_counts(prep.data.n_items),
                             prep.labels, test)
        cells = {m: modality_cell(m, groups) for m in MODALITIES}
        masks = {m: groups.get(cells[m]) for m in MODALITIES}  # None: every case
        for model_name in suite.models:
            declared = tuple(m for m in info[model_name]["modalities"] if m in MODALITIES)
            cases: dict[str, dict[int, tuple]] = {m: {} for m in MODALITIES}
            for seed in suite.seeds:
                key = (entry.label, model_name, seed)
                clean, no_img, no_txt = (
                    _stored_arrays(rows, suite_dir, key, "drop_image", 0.0),
                    _stored_arrays(rows, suite_dir, key, "drop_image", 1.0),
                    _stored_arrays(rows, suite_dir, key, "drop_text", 1.0))
                if clean is None or no_img is None or no_txt is None:
                    entries.append({"model": model_name, "dataset": entry.label, "seed": seed,
                                    "status": "warn", "outcome": "inconclusive",
                                    "metrics": {}, "series": {},
                                    "verdict": "not diagnosed: perturbations do not reach "
                                               "this model (see robustness.json 'skipped')"})
                    continue
                for arrays in (clean, no_img, no_txt):
                    if not np.array_equal(arrays["test_users"], test.user):
                        raise DataError(f"{model_name} seed {seed}: stored test cases differ "
                                        "from the dataset's split: rerun `bench diagnose`")
                for m, without in (("image", no_img), ("text", no_txt)):
                    cases[m][seed] = (cell_values(clean, masks[m], cells[m], metric),
                                      cell_values(without, masks[m], cells[m], metric))
                one_seed = verdict_entry(model_name, entry.label,
                                         {m: {seed: cases[m][seed]} for m in MODALITIES},
                                         cells, declared, alpha, metric)
                row = seed_entry(one_seed, (clean["metrics"][metric], no_img["metrics"][metric],
                                            no_txt["metrics"][metric]), metric)
                if tables:
                    row["metrics"].update(model_tables(suite, prep, model_name, seed, opts))
                row["training"] = training_series(run_folder(suite, prep, model_name, seed, opts))
                entries.append(row)
            if not cases["image"]:
                continue
            verdicts.append(verdict_entry(model_name, entry.label, cases, cells, declared, alpha,
                                          metric))
    path = suite_dir / "diagnostics.json"
    doc = diagnostics_document(suite.name, verdicts, entries, metric, alpha)
    atomic_write_json(path, doc)
    return {**doc, "path": path, "plots": write_plots(doc, path.parent / "diagnostics")}


def write_plots(doc: dict, folder) -> list:
    """The diagnostics figures of the report (:func:`benchmark.report.build.diagnostics_figures`)
    as PNG files in ``folder``; returns their paths."""
    from ..io import atomic_write
    from ..report.build import diagnostics_figures

    paths = []
    for name, png in diagnostics_figures(doc).items():
        path = folder / f"{name}.png"
        atomic_write(path, lambda tmp, png=png: tmp.write_bytes(png))
        paths.append(path)
    return paths
