"""What the report's sections and its Findings share: the options, the context computed once
(every pairwise comparison, the configuration each run used, the models' roles), number
formatting, and the readers of the optional ``diagnostics.json`` whose schema may grow."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..stats import mean_ci
from . import plots
from .results import Run, SuiteResults
from .significance import N_RESAMPLES, Comparison

DEFAULT_REFERENCE = "vlm2rec"
MODALITY_ORDER = ("image", "text")


@dataclass
class ReportOptions:
    reference: str | None = None  # default: vlm2rec if in the suite, else the first model
    metric: str = "ndcg@10"
    alpha: float = 0.05
    n_resamples: int = N_RESAMPLES
    seed: int = 0
    command: str | None = None  # the command that regenerates the report, shown in it


@dataclass
class ConfigUse:
    """Which configuration a run used: the registry's defaults under the suite's preset and
    parameters ("default"), or a sweep's best validation configuration ("tuned")."""

    label: str
    tuned: bool


@dataclass
class Ctx:
    res: SuiteResults
    opts: ReportOptions
    metric: str
    reference: str
    styles: dict[str, plots.Style]
    pairs: list[Comparison] = field(default_factory=list)  # every pair of models, Holm-corrected
    pair_notes: list[str] = field(default_factory=list)  # comparisons that could not be made
    roles: dict[str, str] = field(default_factory=dict)  # model -> model / floor / control

    def pair(self, dataset: str, a: str, b: str) -> Comparison | None:
        """``a`` against ``b`` on ``dataset`` (differences a - b), or None if not compared."""
        for c in self.pairs:
            if c.dataset == dataset and (c.model, c.reference) == (a, b):
                return c
            if c.dataset == dataset and (c.model, c.reference) == (b, a):
                return c.flipped()
        return None

    def models_of(self, dataset: str) -> list[str]:
        return [m for m in self.res.models if self.res.runs_of(dataset, m)]

    def recommenders(self, dataset: str) -> list[str]:
        """Models that learn to recommend (not floors or controls), as the registry says."""
        return [m for m in self.models_of(dataset) if self.roles.get(m, "model") == "model"]

    def floors(self, dataset: str) -> list[str]:
        return [m for m in self.models_of(dataset) if self.roles.get(m) == "floor"]


# -- formatting ----------------------------------------------------------------------------------

def name(metric: str) -> str:
    kind, k = metric.split("@")
    return f"{kind.upper()}@{k}"


def slug(*parts: object) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def pm(values: Sequence[float], digits: int = 4) -> tuple[float, str]:
    """Mean over seeds and its text ``mean ± half-width of the 95% t interval``."""
    mean, ci = mean_ci(list(values))
    return mean, ("—" if math.isnan(mean) else f"{mean:.{digits}f} ± {ci:.{digits}f}")


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "—"
    if p == 0:
        return "< 1e-300"  # below double precision
    return f"{p:.1e}" if p < 1e-4 else f"{p:.4f}"


def num(x) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(num(v) for v in x) + "]"
    return str(x)


def empty(v) -> bool:
    return v is None or (isinstance(v, (dict, list, tuple, str)) and len(v) == 0)


def kv(obj: dict | None) -> str:
    """``k=v, ...`` sorted by key; unset and empty values are left out (not ``x=None``)."""
    out = []
    for k, v in sorted((obj or {}).items()):
        if empty(v):
            continue
        out.append(f"{k}: ({kv(v)})" if isinstance(v, dict) else f"{k}={num(v)}")
    return ", ".join(out)


def ticks(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


# -- runs ----------------------------------------------------------------------------------------

def card(run: Run) -> dict:
    return (run.result or {}).get("provenance") or {}


def params(run: Run) -> dict:
    return card(run).get("config", {}).get("params") or {}


def train_info(run: Run) -> dict:
    return (run.result or {}).get("train") or {}


def config_use(res: SuiteResults, run: Run) -> ConfigUse:
    """What configuration ``run`` used, from its card (``tuning``, written by ``bench run
    --tuned``) or, for runs that predate it (the sweep's own final runs), by comparing its
    parameters with the sweep's best ones."""
    tuning = card(run).get("tuning")
    if tuning:
        value = tuning.get("best_value")
        return ConfigUse(f"tuned: sweep trial {tuning.get('best_trial')}"
                         + (f" (valid {value:.4f})" if isinstance(value, float) else ""), True)
    if res.sweep is None:
        return ConfigUse("default", False)
    study = next((s for s in res.sweep["studies"] if s["model"] == run.model
                  and s.get("dataset", run.dataset) == run.dataset), None)
    if study is None:
        why = "nothing to tune" if run.model in (res.sweep.get("untuned") or []) else "not swept"
        return ConfigUse(f"default ({why})", False)
    best = study.get("best_params")
    if not best:
        return ConfigUse("default (sweep unfinished)", False)
    mine = params(run)
    if all(k in mine and mine[k] == v for k, v in best.items()):
        return ConfigUse(f"tuned: sweep best (trial {study.get('best_trial', '?')})", True)
    return ConfigUse("default (sweep best not used)", False)


def group_use(res: SuiteResults, runs: list[Run]) -> ConfigUse:
    uses = [config_use(res, r) for r in runs]
    labels = list(dict.fromkeys(u.label for u in uses))
    return ConfigUse(labels[0] if len(labels) == 1 else "mixed: " + "; ".join(labels),
                     all(u.tuned for u in uses))


# -- diagnostics.json (read generically: see docs/reports.md) -------------------------------------

def outcome(entry: dict) -> str:
    """The entry's outcome label: ``outcome`` if given, else its verdict up to the first colon
    or parenthesis ("collapsed onto text: image ..." -> "collapsed onto text")."""
    if entry.get("outcome"):
        return str(entry["outcome"])
    return re.split(r":| \(", str(entry["verdict"]), maxsplit=1)[0].strip()


@dataclass
class Contribution:
    value: float
    low: float | None = None
    high: float | None = None
    p: float | None = None


def _first(d: dict, keys: tuple[str, ...]):
    return next((d[k] for k in keys if isinstance(d.get(k), (int, float))
                 and not isinstance(d.get(k), bool)), None)


def contribution(entry: dict, modality: str) -> Contribution | None:
    """A modality's contribution in one entry: ``contributions[m]`` (a number, or an object with
    ``value``/``mean``, ``ci`` as ``[low, high]`` or a half-width, or ``ci_low``/``ci_high``,
    and ``p_holm``/``p``), else the ``metrics`` keys ``<m>_contribution`` (+ ``_ci_low``,
    ``_ci_high``, ``_p``)."""
    c = (entry.get("contributions") or {}).get(modality)
    if c is None:
        metrics = entry.get("metrics") or {}
        key = f"{modality}_contribution"
        if key not in metrics:
            return None
        c = {"value": metrics[key], "ci_low": metrics.get(f"{key}_ci_low"),
             "ci_high": metrics.get(f"{key}_ci_high"), "p": metrics.get(f"{key}_p")}
    if isinstance(c, (int, float)):
        c = {"value": c}
    value = _first(c, ("value", "mean", "contribution", "delta"))
    if value is None:
        return None
    ci, low, high = c.get("ci"), c.get("ci_low"), c.get("ci_high")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        low, high = ci
    elif isinstance(ci, (int, float)):
        low, high = value - ci, value + ci
    return Contribution(float(value), None if low is None else float(low),
                        None if high is None else float(high), _first(c, ("p_holm", "p",
                                                                            "p_value")))


def modalities(entries: list[dict]) -> list[str]:
    found = set()
    for e in entries:
        found |= set(e.get("contributions") or {})
        found |= {k[:-len("_contribution")] for k in (e.get("metrics") or {})
                  if k.endswith("_contribution")}
    return sorted(found, key=lambda m: (m not in MODALITY_ORDER,
                                        MODALITY_ORDER.index(m) if m in MODALITY_ORDER else 0, m))


def diagnostic_groups(entries: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    """Entries grouped by (dataset, model), in file order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        groups.setdefault((str(e.get("dataset", "")), str(e["model"])), []).append(e)
    return list(groups.items())


def group_contribution(entries: list[dict], modality: str) -> Contribution | None:
    """One entry: its contribution as stored. Several (one per seed): their mean with the 95%
    t interval over entries (their own p-values are not combined)."""
    found = [c for c in (contribution(e, modality) for e in entries) if c is not None]
    if not found:
        return None
    if len(found) == 1 and len(entries) == 1:
        return found[0]
    mean, half = mean_ci([c.value for c in found])
    return Contribution(mean, mean - half, mean + half, None)


def outcome_counts(entries: list[dict]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[outcome(e)] = counts.get(outcome(e), 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
