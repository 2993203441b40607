"""The world check: the suite checks its own controlled-modality world.

``docs/synthetic.md`` says what the numbers on the synthetic dataset must show if the world and the
harness work (an ID-only model is at chance on cold cases, a content model ranks the cold cases
of the modality it reads, SASRec beats MostPop, ...). Each such sentence is an
:class:`Expectation` below, written down before any number was measured and never tuned to pass.
:func:`world_check` measures every expectation on a suite's summary rows (``summary.json``: per
model and seed ``test``, ``test_groups``, ``test_group_sizes``) and says pass, fail or skipped
(the suite lacks a model the expectation needs, or the rows lack its cells).

Two kinds of comparison, both on one metric (NDCG@10 by default), mean and 95% CI over seeds
(:func:`benchmark.stats.mean_ci`):

- **above** (model A above model B on a cell): the per-seed differences A - B (paired by seed)
  have a 95% CI whose lower end is above 0. With one seed there is no CI: a plain comparison,
  flagged in the reason. Only seed noise enters; case-sampling noise does not (both models rank
  the same cases).
- **at** (model A at the level of a reference on a cell, e.g. at chance): |mean A - mean ref| is
  within the case-sampling noise of a random ranker on that cell, a band of
  ``z * se * sqrt(1 + 1 / n_ref_seeds)`` where ``se`` is the standard error of the mean metric of
  a uniformly random ranking over the cell's cases (its candidate count is inferred from the
  reference's value: NDCG@K of a random ranking among n candidates is ``sum_{r<K} 1/log2(r+2) /
  n``), and ``z`` is Bonferroni-corrected over the cells of one expectation (family-wise 95%).
  The reference for "chance" is the ``random`` floor of the same suite.

Cold cells are read as the evaluator reports them (under the cold-start protocol, ranked among
the never-trained items). Models are recognised by their registered modalities (a suite variant
may declare its own, e.g. a text-only CLIP-SASRec, through :func:`suite_model_info`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RANDOM, COLDFIRST, MOSTPOP, COOC, SASREC = "random", "coldfirst", "mostpop", "cooc", "sasrec"
CONTROLS = (RANDOM, COLDFIRST, MOSTPOP, COOC)  # floors and controls: never "trained models"
SIGNAL_CELLS = ("visual", "textual", "collaborative", "popularity")
COLD_CELLS = ("target=cold", *(f"signal={s},target=cold" for s in SIGNAL_CELLS))
OVERALL = "overall"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Expectation:
    """One sentence of docs/synthetic.md as a check.

    ``kind``: "above" (each model above ``reference`` on each cell) or "at" (each model within
    noise of ``reference`` on each cell). ``models`` picks the models it applies to from the
    suite's model info (name -> {"modalities", "trainable"}); ``needs`` names models that must be
    in the suite (else skipped)."""

    id: str
    claim: str
    kind: str
    cells: tuple[str, ...]
    reference: str
    models: Callable[[dict[str, dict]], list[str]]
    needs: tuple[str, ...] = ()


def _named(*names: str) -> Callable[[dict[str, dict]], list[str]]:
    return lambda info: [n for n in names if n in info]


def _where(test: Callable[[dict], bool]) -> Callable[[dict[str, dict]], list[str]]:
    """The recommenders (not floors or controls, by name or registry role) that pass ``test``."""
    return lambda info: [n for n, i in info.items() if n not in CONTROLS
                         and i.get("role", "model") == "model" and test(i)]


def _mods(i: dict) -> set[str]:
    return set(i.get("modalities") or ())


_ID_ONLY = _where(lambda i: _mods(i) == {"id"})
_TEXT_ONLY = _where(lambda i: "text" in _mods(i) and "image" not in _mods(i))
_IMAGE_ONLY = _where(lambda i: "image" in _mods(i) and "text" not in _mods(i))
_READS_IMAGE = _where(lambda i: "image" in _mods(i))
_READS_TEXT = _where(lambda i: "text" in _mods(i))
_TRAINED = _where(lambda i: bool(i.get("trainable")))
_UNLEARNABLE = ("signal=collaborative,target=cold", "signal=popularity,target=cold")

# Written before any number of the calibrated world was looked at (see the module docstring).
EXPECTATIONS: tuple[Expectation, ...] = (
    Expectation("coldfirst-at-chance-cold",
                "the cold-first control is at chance on every cold cell (cold cases measure "
                "content, not coldness)",
                "at", COLD_CELLS, RANDOM, _named(COLDFIRST), needs=(COLDFIRST, RANDOM)),
    Expectation("coldfirst-at-chance-overall",
                "the cold-first control is at chance overall (equal target frequency per item)",
                "at", (OVERALL,), RANDOM, _named(COLDFIRST), needs=(COLDFIRST, RANDOM)),
    Expectation("id-only-at-chance-cold",
                "an ID-only model is at chance on every cold cell",
                "at", COLD_CELLS, RANDOM, _ID_ONLY, needs=(RANDOM,)),
    Expectation("sasrec-above-mostpop",
                "SASRec is above MostPop overall",
                "above", (OVERALL,), MOSTPOP, _named(SASREC), needs=(SASREC, MOSTPOP)),
    Expectation("sasrec-above-cooc-warm",
                "SASRec is above the counting baseline on warm cases",
                "above", ("target=warm",), COOC, _named(SASREC), needs=(SASREC, COOC)),
    Expectation("trained-above-mostpop",
                "every trained model is above MostPop overall",
                "above", (OVERALL,), MOSTPOP, _TRAINED, needs=(MOSTPOP,)),
    Expectation("text-only-above-coldfirst-cold-textual",
                "a text-only content model is above the cold-first control on cold textual cases",
                "above", ("signal=textual,target=cold",), COLDFIRST, _TEXT_ONLY,
                needs=(COLDFIRST,)),
    Expectation("text-only-at-coldfirst-cold-visual",
                "a text-only content model is within noise of the cold-first control on cold "
                "visual cases",
                "at", ("signal=visual,target=cold",), COLDFIRST, _TEXT_ONLY, needs=(COLDFIRST,)),
    Expectation("image-only-above-coldfirst-cold-visual",
                "an image-only content model is above the cold-first control on cold visual "
                "cases",
                "above", ("signal=visual,target=cold",), COLDFIRST, _IMAGE_ONLY,
                needs=(COLDFIRST,)),
    Expectation("image-only-at-coldfirst-cold-textual",
                "an image-only content model is within noise of the cold-first control on cold "
                "textual cases",
                "at", ("signal=textual,target=cold",), COLDFIRST, _IMAGE_ONLY,
                needs=(COLDFIRST,)),
    Expectation("image-reader-above-sasrec-cold-visual",
                "every model that reads images is above SASRec on cold visual cases",
                "above", ("signal=visual,target=cold",), SASREC, _READS_IMAGE, needs=(SASREC,)),
    Expectation("text-reader-above-sasrec-cold-textual",
                "every model that reads text is above SASRec on cold textual cases",
                "above", ("signal=textual,target=cold",), SASREC, _READS_TEXT, needs=(SASREC,)),
    Expectation("unlearnable-at-chance",
                "no model beats chance on cold collaborative and cold popularity cases (the "
                "group and the popularity of a cold item are never observed)",
                "at", _UNLEARNABLE, RANDOM, _where(lambda i: True), needs=(RANDOM,)),
)


def registry_model_info(names: Sequence[str]) -> dict[str, dict]:
    """name -> {"modalities", "trainable", "role"} from the registry; names it does not know are left
    out (the expectations that would need them are skipped)."""
    from .errors import ConfigError
    from .registry import get_model_spec

    info = {}
    for name in names:
        try:
            spec = get_model_spec(name)
        except ConfigError:
            continue
        info[name] = {"modalities": tuple(spec.modalities), "trainable": spec.trainable,
                      "role": getattr(spec, "role", "model")}
    return info


def suite_model_info(suite) -> dict[str, dict]:
    """name -> {"modalities", "trainable", "role"} for every model of a suite: the registry's entry of
    the model (a variant's base model), with a variant's ``modalities`` parameter (a list or a
    comma-separated string, e.g. a text-only CLIP-SASRec) replacing the base's content
    modalities."""
    info = {}
    for name in suite.models:
        spec = suite.spec(name)
        modalities = tuple(spec.modalities)
        chosen = suite.variants.get(name, {}).get("params", {}).get("modalities")
        if chosen is not None:
            chosen = chosen.split(",") if isinstance(chosen, str) else list(chosen)
            keep_id = ("id",) if "id" in modalities else ()
            modalities = tuple(m.strip() for m in chosen if m.strip()) + keep_id
        info[name] = {"modalities": modalities, "trainable": spec.trainable,
                      "role": getattr(spec, "role", "model")}
    return info


def _value(row: dict, cell: str, metric: str) -> float | None:
    if cell == OVERALL:
        return row.get("test", {}).get(metric)
    return row.get("test_groups", {}).get(cell, {}).get(metric)


def _size(row: dict, cell: str) -> int | None:
    sizes = row.get("test_group_sizes", {})
    if cell == OVERALL:
        parts = [sizes.get("target=warm"), sizes.get("target=cold")]
        return sum(p for p in parts if p) or None
    return sizes.get(cell)


def _per_seed(rows: list[dict], model: str, cell: str, metric: str) -> dict[int, float]:
    out = {}
    for r in rows:
        if r["model"] == model:
            v = _value(r, cell, metric)
            if v is not None and math.isfinite(v):
                out[int(r["seed"])] = float(v)
    return out


def random_ranking_se(level: float, n_cases: int, k: int, metric: str) -> float:
    """Standard error of the mean ``metric@k`` of a uniformly random ranking over ``n_cases``
    cases, its candidate count inferred from ``level`` (its expected value); nan if unknown."""
    name = metric.split("@")[0]
    gains = [_gain(name, r) for r in range(k)]
    if not level > 0 or not n_cases:
        return math.nan
    n = sum(gains) / level  # candidates per case: E[metric] = sum(gains) / n
    second = sum(g * g for g in gains) / n
    return math.sqrt(max(second - level * level, 0.0) / n_cases)


def _gain(name: str, r: int) -> float:
    if name == "ndcg":
        return 1.0 / math.log2(r + 2)
    if name == "mrr":
        return 1.0 / (r + 1)
    return 1.0  # hr


def _z(n_tests: int) -> float:
    from scipy import stats

    return float(stats.norm.ppf(1 - (1 - CONFIDENCE) / (2 * max(n_tests, 1))))


def _compare(exp: Expectation, rows: list[dict], model: str, cell: str, metric: str,
             z: float) -> dict:
    from .stats import mean_ci

    mine, ref = _per_seed(rows, model, cell, metric), _per_seed(rows, exp.reference, cell, metric)
    out: dict[str, Any] = {"model": model, "reference": exp.reference, "cell": cell}
    if not mine or not ref:
        missing = model if not mine else exp.reference
        return {**out, "status": "skipped", "reason": f"no {cell} value for {missing}"}
    mean, ci = mean_ci(list(mine.values()))
    ref_mean, ref_ci = mean_ci(list(ref.values()))
    out.update(values=[mine[s] for s in sorted(mine)], seeds=sorted(mine), mean=mean, ci=ci,
               reference_mean=ref_mean, reference_ci=ref_ci)
    if exp.kind == "above":
        seeds = sorted(set(mine) & set(ref))
        diffs = [mine[s] - ref[s] for s in seeds] or [mean - ref_mean]
        d_mean, d_ci = mean_ci(diffs)
        ok = d_mean - d_ci > 0
        note = (" (no common seed: means compared, no CI)" if not seeds
                else " (one seed: no CI)" if len(seeds) == 1 else "")
        out.update(diff_mean=d_mean, diff_ci=d_ci, status="pass" if ok else "fail",
                   reason=f"difference {d_mean:+.4f} ± {d_ci:.4f} over {len(seeds)} seed(s)"
                          + note)
        return out
    n_cases = next((_size(r, cell) for r in rows if r["model"] == model), None)
    k = int(metric.split("@")[1])
    se = random_ranking_se(ref_mean, n_cases or 0, k, metric)
    if not math.isfinite(se):
        return {**out, "status": "skipped",
                "reason": f"no case count or reference level for {cell}"}
    band = z * se * math.sqrt(1 + 1 / len(ref))
    ok = abs(mean - ref_mean) <= band
    out.update(n_cases=n_cases, band=band, status="pass" if ok else "fail",
               reason=f"|{mean:.4f} - {ref_mean:.4f}| {'<=' if ok else '>'} {band:.4f} "
                      f"(random-ranking noise on {n_cases} cases, z={z:.2f})")
    return out


def world_check(rows: list[dict], dataset_label: str, metric: str = "ndcg@10",
                models: Mapping[str, dict] | None = None) -> dict:
    """Every expectation of :data:`EXPECTATIONS` measured on a suite's summary rows for one
    dataset. ``models``: name -> {"modalities", "trainable", "role"}, over the registry's
    entries of the rows' model names (pass :func:`suite_model_info` for a suite with variants).

    Returns ``{"dataset", "metric", "applies", "seeds", "counts": {pass, fail, skipped},
    "expectations": [{"id", "claim", "status", "reason", "checks": [per model and cell:
    values, mean, ci, reference_mean, reference_ci, status, reason, ...]}]}``; ``applies`` is
    False (and nothing is checked) when the rows carry no signal x warm/cold cells, i.e. the
    dataset is not a controlled-modality world."""
    rows = [r for r in rows if r.get("dataset") == dataset_label and r.get("status", "ok") == "ok"]
    doc: dict[str, Any] = {"dataset": dataset_label, "metric": metric, "applies": False,
                           "seeds": sorted({int(r["seed"]) for r in rows}),
                           "counts": {"pass": 0, "fail": 0, "skipped": 0}, "expectations": []}
    if not any("signal=visual,target=cold" in r.get("test_groups", {}) for r in rows):
        doc["reason"] = "no signal x warm/cold cells: not a controlled-modality dataset"
        return doc
    doc["applies"] = True
    names = list(dict.fromkeys(r["model"] for r in rows))
    # the registry knows every registered name in the rows (runs of earlier calls included);
    # ``models`` adds or overrides (a suite's variants)
    info = {**registry_model_info(names), **(models or {})}
    info = {n: i for n, i in info.items() if n in names}
    for exp in EXPECTATIONS:
        entry: dict[str, Any] = {"id": exp.id, "claim": exp.claim, "kind": exp.kind,
                                 "reference": exp.reference, "checks": []}
        lacking = [n for n in exp.needs if n not in names]
        chosen = [m for m in exp.models(info) if m != exp.reference]
        if lacking or not chosen:
            entry.update(status="skipped", reason=(
                f"the suite lacks {', '.join(lacking)}" if lacking
                else "the suite has no model this applies to"))
        else:
            z = _z(len(exp.cells) * len(chosen))
            entry["checks"] = [_compare(exp, rows, m, c, metric, z)
                               for m in chosen for c in exp.cells]
            statuses = {c["status"] for c in entry["checks"]}
            if "fail" in statuses:
                entry["status"] = "fail"
            elif statuses == {"skipped"}:
                entry["status"] = "skipped"
            else:
                entry["status"] = "pass"
            failed = [f"{c['model']} on {c['cell']}" for c in entry["checks"]
                      if c["status"] == "fail"]
            entry["reason"] = (f"failed: {'; '.join(failed)}" if failed else
                               f"{len(entry['checks'])} check(s) on {', '.join(chosen)}")
        doc["counts"][entry["status"]] += 1
        doc["expectations"].append(entry)
    return doc


def format_world_check(doc: dict) -> str:
    """The world check as terminal lines: one per expectation, one per model x cell under it."""
    if not doc.get("applies"):
        return f"world check ({doc.get('dataset')}): not applicable: {doc.get('reason', '')}"
    c = doc["counts"]
    head = (f"world check ({doc['dataset']}, {doc['metric']}, seeds {doc['seeds']}): "
            f"{c['pass']} pass, {c['fail']} fail, {c['skipped']} skipped")
    lines = [head]
    for e in doc["expectations"]:
        lines.append(f"  {e['status'].upper():<7} {e['id']}: {e['claim']}")
        if e["status"] == "skipped" and not e["checks"]:
            lines.append(f"          ({e['reason']})")
        for ch in e["checks"]:
            if "mean" not in ch:
                lines.append(f"          {ch['status']:<7} {ch['model']} {ch['cell']}: "
                             f"{ch['reason']}")
                continue
            lines.append(f"          {ch['status']:<7} {ch['model']} {ch['cell']}: "
                         f"{ch['mean']:.4f} ± {ch['ci']:.4f} vs {ch['reference']} "
                         f"{ch['reference_mean']:.4f} ± {ch['reference_ci']:.4f}; "
                         f"{ch['reason']}")
    return "\n".join(lines)
