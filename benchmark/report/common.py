"""What the report's sections and its Findings share: the options, the context computed once
(every pairwise comparison, the configuration each run used, the models' roles), number
formatting, and the reader of the optional ``diagnostics.json`` (schema 2, or schema 1)."""

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


# -- diagnostics.json (schema: the docstring of benchmark/diagnostics, docs/robustness.md) -------

def outcome(entry: dict) -> str:
    """A per-seed entry's outcome: ``outcome`` (schema 2), else its verdict up to the first colon
    or parenthesis (schema 1: "collapsed onto text: image ..." -> "collapsed onto text")."""
    if entry.get("outcome"):
        return str(entry["outcome"])
    return re.split(r":| \(", str(entry["verdict"]), maxsplit=1)[0].strip()


def not_diagnosed(entry: dict) -> bool:
    """A per-seed entry the dropout test could not reach (its verdict says so, in every
    schema)."""
    return str(entry["verdict"]).startswith("not diagnosed")


def verdicts(data: dict) -> list[dict]:
    """The verdicts the report shows, one per (dataset, model), each shaped as a schema-2
    ``verdicts`` entry: the file's own (schema 2: over each model's seeds), or for a schema-1 file
    (per-seed entries only) each model's diagnosed seeds summarised: the outcome if every seed
    agrees, else the outcomes counted; per modality, on all test cases (the old rule's cell),
    the mean clean and without metric and the contribution with its 95% interval over seeds;
    no test (``p_holm`` and ``state`` None)."""
    if "verdicts" in data:
        return data["verdicts"]
    from ..diagnostics import MODALITIES, OVERALL, seed_interval

    metric = data.get("metric", "ndcg@10")
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in data["models"]:
        if not not_diagnosed(e):
            groups.setdefault((str(e.get("dataset", "")), str(e["model"])), []).append(e)
    out = []
    for (dataset, model), entries in groups.items():
        counts = outcome_counts(entries)
        label = (counts[0][0] if len(counts) == 1 else
                 "mixed over seeds: " + ", ".join(f"{o} ({n})" for o, n in counts))
        statuses = {e.get("status") for e in entries}
        evidence = {}
        for m in MODALITIES:
            shares = _seed_values(entries, f"{m}_contribution")
            if not shares:
                continue
            clean = _seed_values(entries, f"clean_{metric}")
            without = _seed_values(entries, f"no_{m}_{metric}")
            evidence[m] = {"cell": OVERALL, "n_users": None,
                           "clean_mean": _mean(clean), "without_mean": _mean(without),
                           "contribution_mean": _mean(shares),
                           "contribution_ci": seed_interval(shares), "p_holm": None,
                           "state": None}
        out.append({"model": model, "dataset": dataset,
                    "seeds": [e.get("seed") for e in entries], "given": None,
                    "outcome": label,
                    "status": next((x for x in ("fail", "warn", "pass") if x in statuses), ""),
                    "verdict": None, "modalities": evidence})
    return out


def _seed_values(entries: list[dict], key: str) -> list[float]:
    """A schema-1 measure of each seed that has it."""
    return [float(v) for e in entries
            if isinstance(v := (e.get("metrics") or {}).get(key), (int, float))]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def outcome_counts(entries: list[dict]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[outcome(e)] = counts.get(outcome(e), 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def share(value: float | None, interval: list[float] | None) -> str:
    """A signed contribution as a percentage with its interval over seeds:
    ``+91.2% [+89.0%, +93.4%]``; ``n/a (clean is 0)`` when undefined."""
    if value is None:
        return "n/a (clean is 0)"
    text = f"{value:+.1%}"
    return text + (f" [{interval[0]:+.1%}, {interval[1]:+.1%}]" if interval else "")
