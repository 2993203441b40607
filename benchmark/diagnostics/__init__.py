"""Modality diagnostics: dropout test, contribution, cross-modal topology, embedding health,
and a collapse verdict per trained model.

- **Modality-dropout test**: test accuracy with every image removed, every text removed, and
  both present (the robustness evaluations ``drop_image@1``, ``drop_text@1`` and rate 0).
- **Contribution** of a modality: the share of the clean accuracy lost without it,
  ``max(0, (clean - without) / clean)``.
- **Verdict** (:func:`collapse_verdict`): with threshold ``X`` (default 10%), a model whose
  image contributes under X% while its text contributes at least X% has *collapsed onto text*
  (and symmetrically onto image); both at least X%: *uses both*; neither: *reads no content*
  (status pass for a model that declares no content modality, warn otherwise). A collapse is
  ``fail`` for a model given both modalities and ``warn`` for one given a single modality by
  design.
- **Topology agreement** of a model's image-only and text-only item representations (the
  content features it declares, or its own unimodal tables, ``model.modality_tables()``, for a
  model that reads raw content such as VLM2Rec): linear CKA (Kornblith et al. 2019) and the
  symmetric KL of relational distributions (the CRTR loss of :mod:`methods.vlm2rec.losses`).
- **Structure contribution**: linear CKA between the model's fused item table (the one it
  scores with) and each modality's table: how much of its similarity structure each explains.
- **Embedding health** of each table: effective rank (Roy & Vetterli 2007), and the alignment
  and uniformity of Wang & Isola (2020).
- **Training series** of a model that records per-step diagnostics (VLM2Rec, its run's
  ``train_steps.json``): the in-batch unimodal retrieval probabilities ``p_text`` / ``p_image``,
  ``rho``, ``beta``, and the per-modality gradient norms ``grad_text`` / ``grad_image`` on the
  steps that measured them (``grad_probe_every``).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..io import atomic_write_json

log = logging.getLogger(__name__)

THRESHOLD = 0.10
METRIC = "ndcg@10"


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


def contribution(clean: float, without: float) -> float:
    """Share of the clean accuracy lost when a modality is removed (0 when nothing to lose)."""
    return max(0.0, (clean - without) / clean) if clean > 1e-12 else 0.0


def collapse_verdict(clean: float, no_image: float, no_text: float,
                     declared: tuple[str, ...] | None = None,
                     threshold: float = THRESHOLD) -> tuple[str, str, dict]:
    """(verdict, status, metrics) from the modality-dropout test (see the module docstring).
    ``declared``: the content modalities the model is given (None: image and text)."""
    declared = ("image", "text") if declared is None else tuple(
        m for m in declared if m in ("image", "text"))
    c_img, c_txt = contribution(clean, no_image), contribution(clean, no_text)
    metrics = {"clean": clean, "no_image": no_image, "no_text": no_text,
               "image_contribution": c_img, "text_contribution": c_txt}
    pct = f"{threshold * 100:g}%"
    if c_img >= threshold and c_txt >= threshold:
        return (f"uses both modalities (image {c_img:.1%}, text {c_txt:.1%} of the accuracy)",
                "pass", metrics)
    for kept, lost, c_lost in (("text", "image", c_img), ("image", "text", c_txt)):
        other = c_txt if kept == "text" else c_img
        if c_lost < threshold <= other:
            status = "fail" if lost in declared else "warn"
            verdict = (f"collapsed onto {kept}: {lost} contributes {c_lost:.1%} of the "
                       f"accuracy (under {pct})")
            return verdict, status, metrics
    if not declared:
        return "reads no content: neither modality contributes", "pass", metrics
    verdict = (f"content ignored: neither image ({c_img:.1%}) nor text ({c_txt:.1%}) "
               f"contributes {pct}")
    return verdict, "warn", metrics


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


def _lookup(rows: list[dict], key: tuple, perturbation: str, rate: float,
            metric: str) -> float | None:
    hits = [r["metrics"][metric] for r in rows
            if (r.get("dataset"), r["model"], r.get("seed")) == key
            and r["perturbation"] == perturbation and float(r["rate"]) == rate]
    return hits[-1] if hits else None


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


def run_diagnostics(suite, opts, metric: str = METRIC, threshold: float = THRESHOLD) -> dict:
    """The modality-dropout test (through :mod:`benchmark.robustness`), the verdicts, the
    table measures and training series of every run of a suite; writes
    ``<suite>/diagnostics.json``."""
    from ..robustness import run_folder, run_robustness
    from ..runner import prepare_dataset

    out = run_robustness(suite, ["drop_image", "drop_text"], [0.0, 1.0], opts)
    rows = out["rows"]
    entries = []
    for entry in suite.datasets:
        prep = prepare_dataset(entry, suite, opts)
        for model_name in suite.models:
            mspec = suite.spec(model_name)
            for seed in suite.seeds:
                key = (entry.label, model_name, seed)
                clean, no_img, no_txt = (_lookup(rows, key, "drop_image", 0.0, metric),
                                         _lookup(rows, key, "drop_image", 1.0, metric),
                                         _lookup(rows, key, "drop_text", 1.0, metric))
                if None in (clean, no_img, no_txt):
                    entries.append({"model": model_name, "dataset": entry.label, "seed": seed,
                                    "status": "warn", "metrics": {}, "series": {},
                                    "verdict": "not diagnosed: perturbations do not reach "
                                               "this model (see robustness.json 'skipped')"})
                    continue
                verdict, status, metrics = collapse_verdict(clean, no_img, no_txt,
                                                            mspec.modalities, threshold)
                tables = model_tables(suite, prep, model_name, seed, opts)
                metrics = {**{f"{k}_{metric}" if k in ("clean", "no_image", "no_text") else k: v
                              for k, v in metrics.items()}, **tables}
                run_dir = run_folder(suite, prep, model_name, seed, opts)
                entries.append({"model": model_name, "dataset": entry.label, "seed": seed,
                                "status": status, "verdict": verdict, "metrics": metrics,
                                "series": {f"test {metric} (both, no image, no text)":
                                           [clean, no_img, no_txt]},
                                "training": training_series(run_dir)})
    path = opts.results_dir / suite.name / "diagnostics.json"
    doc = {"suite": suite.name, "step": "condition", "metric": metric, "threshold": threshold,
           "models": entries}
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
