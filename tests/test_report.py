"""Reports: hand-checked significance, deterministic rendering from stored results, every section,
the CLI, and a headless-Chromium render. Results are fake but valid (nothing is trained)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from verdict_helpers import planted_cases

from benchmark.cli import main
from benchmark.evaluation import mean_metrics
from benchmark.report import significance as sig
from benchmark.report.build import ReportOptions, build_document, render_report
from benchmark.report.common import fmt_p
from benchmark.report.results import load_results, per_user, seed_averaged

SIGNALS = ("visual", "textual", "collaborative", "popularity")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)


# -- fixture generator ---------------------------------------------------------------------------

def write_fake_results(root: Path, suite: str = "fake",
                       models: tuple[str, ...] = ("sasrec", "mostpop", "good", "twin"),
                       seeds: tuple[int, ...] = (0, 1, 2), datasets: tuple[str, ...] = ("synthetic",),
                       n_users: int = 300, n_items: int = 200, extras: bool = True) -> Path:
    """Write a suite's results as :mod:`benchmark.runner` lays them out, with ranks drawn per
    model (``good`` is far better than the rest; ``twin`` has exactly the ranks of the first
    model). With ``extras``, also robustness, diagnostics and sweep files. Returns the suite dir."""
    suite_dir = root / suite
    rows = []
    for d_i, dataset in enumerate(datasets):
        labels = np.random.default_rng(100 + d_i)
        signal = labels.choice(SIGNALS, size=n_users)
        target = np.where(labels.random(n_users) < 0.4, "cold", "warm")
        for m_i, model in enumerate(models):
            for seed in seeds:
                rng = np.random.default_rng([d_i, m_i, seed])
                quality = 0.5 if model == "good" else 0.05 + 0.01 * m_i + 0.005 * seed
                if model == "twin":
                    rng = np.random.default_rng([d_i, 0, seed])
                    quality = 0.05 + 0.005 * seed
                ranks = np.minimum(rng.geometric(quality, n_users) - 1, n_items - 2)
                order = rng.permutation(n_users)  # stored case order differs between runs
                users = np.arange(1, n_users + 1)
                groups, sizes = {}, {}
                for name, values in (("signal", signal), ("target", target)):
                    for v in sorted(set(values.tolist())):
                        groups[f"{name}={v}"] = mean_metrics(ranks[values == v])
                        sizes[f"{name}={v}"] = int((values == v).sum())
                for s in SIGNALS:
                    for t in ("warm", "cold"):
                        mask = (signal == s) & (target == t)
                        groups[f"signal={s},target={t}"] = mean_metrics(ranks[mask])
                        sizes[f"signal={s},target={t}"] = int(mask.sum())
                run_dir = suite_dir / "runs" / dataset / model / f"seed-{seed}"
                run_dir.mkdir(parents=True)
                np.savez_compressed(run_dir / "per_case.npz", valid_users=users[order],
                                    valid_ranks=ranks[order], test_users=users[order],
                                    test_ranks=ranks[order])
                row = {"suite": suite, "dataset": dataset, "model": model, "seed": seed,
                       "status": "ok", "valid": mean_metrics(ranks), "test": mean_metrics(ranks),
                       "test_groups": groups, "test_group_sizes": sizes, "wall_seconds": 1.5,
                       "run_dir": str(run_dir), "mlflow_run_id": f"run{m_i}{seed}",
                       "best_epoch": 3, "epochs": 5}
                card = {"code": {"commit": "0" * 40, "dirty": False},
                        "packages": {"numpy": "2.0", "torch": "2.13.0"},
                        "hardware": {"cpus": 2, "device": "cpu"},
                        "dataset": {"name": dataset, "content_hash": "abc123",
                                    "counts": {"users": n_users, "items": n_items},
                                    "coverage": {"image": 1.0, "text": 1.0}, "findings": []},
                        "split": {"kind": "loo", "checksum": "def456", "test_cases": n_users},
                        "config_hash": f"cfg{m_i}{seed}",
                        "config": {"model": model, "params": {"hidden_size": 8}, "seed": seed,
                                   "evaluation": {"mode": "full", "ks": [5, 10, 20]}},
                        "seed": seed, "wall_seconds": 1.5, "mlflow_run_id": f"run{m_i}{seed}",
                        "tracking_uri": "sqlite:///mlflow.db"}
                history = [{"epoch": e, "train_loss": 5 - 0.5 * e + 0.1 * seed,
                            "valid_ndcg@10": 0.1 + 0.02 * e + 0.01 * m_i} for e in range(5)]
                train = {} if model == "mostpop" else {"best_epoch": 4, "epochs": 5,
                                                       "history": history}
                (run_dir / "result.json").write_text(json.dumps(
                    {"config_hash": card["config_hash"], "row": row, "provenance": card,
                     "train": train}))
                rows.append(row)
    (suite_dir / "summary.json").write_text(json.dumps({"suite": suite, "rows": rows}))
    if extras:
        (suite_dir / "robustness.json").write_text(json.dumps({"rows": [
            {"dataset": datasets[0], "model": m, "seed": s, "perturbation": p, "rate": r,
             "metrics": {"ndcg@10": 0.3 - 0.2 * r + 0.01 * i + 0.002 * s}}
            for i, m in enumerate(models) for s in seeds
            for p in ("missing_image", "missing_text") for r in (0.0, 0.25, 0.5, 1.0)]}))
        write_diagnostics(suite_dir, models, seeds, datasets[0])
        sweep_dir = root / f"{suite}-sweep"
        sweep_dir.mkdir()
        (sweep_dir / "sweep.json").write_text(json.dumps({"studies": [
            {"model": m, "dataset": datasets[0], "direction": "maximize",
             "trials": [{"number": t, "value": 0.1 + 0.01 * ((t * 7) % 5), "state": "COMPLETE",
                         "params": {"lr": 0.001 * (t + 1)}} for t in range(6)]
             + [{"number": 6, "value": None, "state": "PRUNED", "params": {"lr": 0.1}}],
             "best_params": {"lr": 0.005}, "best_value": 0.14} for m in models[:2]]}))
    return suite_dir


#: planted use of the modalities of the fake models: per-seed effects of removing the image
#: and the text on each user's metric; any other model is given no content and reads none
PLANTED = {"good": ([0.1, 0.1, 0.1], [0.15, 0.15, 0.15]),        # uses both
           "twin": ([0.0, 0.0, 0.0], [0.2, 0.2, 0.2]),           # collapsed onto text (fail)
           "m5": ([-0.1, -0.1, -0.1], [0.1, 0.1, 0.1]),          # images hurt
           "m6": ([0.15, 0.15, -0.05], [0.15, 0.15, 0.15])}      # inconclusive: seeds disagree
DIAG_RESAMPLES = 2000


def planted_model_cases(models: tuple[str, ...], seeds: tuple[int, ...]) -> dict:
    """model -> modality -> seed -> (clean, without) per-user metric on the modality's cell."""
    out = {}
    for i, m in enumerate(models):
        image, text = PLANTED.get(m, ([0.0] * 3, [0.0] * 3))
        out[m] = {mod: dict(zip(seeds, planted_cases(effects[:len(seeds)],
                                                     seed=2 * i + j).values()))
                  for j, (mod, effects) in enumerate((("image", image), ("text", text)))}
    return out


def write_diagnostics(suite_dir: Path, models: tuple[str, ...], seeds: tuple[int, ...],
                      dataset: str) -> dict:
    """diagnostics.json as `bench diagnose` writes it (schema 2), built by its own functions
    from the planted per-user cases on the synthetic world's cells: a seed's entry from that
    seed's verdict, one verdict over the seeds per model."""
    from benchmark.diagnostics import CELLS, diagnostics_document, seed_entry, verdict_entry

    verdicts, entries = [], []
    for i, (m, cases) in enumerate(planted_model_cases(models, seeds).items()):
        given = ("image", "text") if m in PLANTED else ()
        for s in seeds:
            one = verdict_entry(m, dataset, {mod: {s: c[s]} for mod, c in cases.items()}, CELLS,
                                given, n_resamples=DIAG_RESAMPLES)
            overall = (float(np.mean(cases["image"][s][0])), float(np.mean(cases["image"][s][1])),
                       float(np.mean(cases["text"][s][1])))
            entry = seed_entry(one, overall)
            entry["metrics"]["cka_image_text"] = 0.5  # a table measure, as `bench diagnose` adds
            if i == 0:  # the training series a VLM2Rec run records
                entry["training"] = {"step": [0, 1, 2, 3], "p_text": [0.1, 0.2, 0.3, 0.4],
                                     "p_image": [0.1, 0.1, 0.2, 0.2],
                                     "grad_text": [1.0, None, 0.8, None],
                                     "grad_image": [0.5, None, 0.3, None]}
            entries.append(entry)
        verdicts.append(verdict_entry(m, dataset, cases, CELLS, given,
                                      n_resamples=DIAG_RESAMPLES))
    doc = diagnostics_document(suite_dir.name, verdicts, entries)
    (suite_dir / "diagnostics.json").write_text(json.dumps(doc))
    return doc


@pytest.fixture(scope="module")
def suite6(tmp_path_factory) -> tuple[Path, Path, float]:
    """6 models x 3 seeds on a 1,500-user dataset, rendered once; timed in CPU seconds of this
    process (wall time on a shared, loaded machine would measure the neighbours)."""
    root = tmp_path_factory.mktemp("results")
    suite_dir = write_fake_results(root, "six", ("sasrec", "mostpop", "good", "twin", "m5", "m6"),
                                   n_users=1500, n_items=500)
    out = tmp_path_factory.mktemp("reports")
    start = time.process_time()
    render_report(suite_dir, root, out)
    return suite_dir, out / "six", time.process_time() - start


# -- significance --------------------------------------------------------------------------------

def test_paired_ttest_hand_checked_and_equal_to_scipy():
    a = np.array([3.0, 5.0, 7.0, 9.0, 11.0])
    b = np.array([2.0, 3.0, 4.0, 5.0, 6.0])  # differences 1..5: mean 3, sd sqrt(2.5)
    t, p = sig.paired_ttest(a, b)
    assert t == pytest.approx(3 / (math.sqrt(2.5) / math.sqrt(5)))
    assert p == pytest.approx(2 * stats.t.sf(t, df=4))
    ref = stats.ttest_rel(a, b)
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert sig.paired_ttest(a, a) == (0.0, 1.0)
    assert sig.paired_ttest(a + 1, a) == (math.inf, 0.0)


def test_bootstrap_covers_true_difference_and_is_seeded():
    rng = np.random.default_rng(0)
    b = rng.random(2000)
    noise = rng.normal(0, 0.3, 1000)
    a = b + 0.1 + np.concatenate([noise, -noise])  # the sample mean difference is exactly 0.1
    mean, low, high = sig.paired_bootstrap(a, b, seed=7)
    assert mean == pytest.approx(0.1)
    assert low < 0.1 < high and low > 0
    se = np.std(a - b, ddof=1) / math.sqrt(len(a))
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert sig.paired_bootstrap(a, b, seed=7) == (mean, low, high)
    assert sig.paired_bootstrap(a, b, seed=8) != (mean, low, high)


def test_permutation_test_exact_and_monte_carlo():
    # Differences 1, 2, 3: the 8 sign flips give |sum| = 6, 4, 2, 0, 0, 2, 4, 6; 2 reach 6.
    assert sig.permutation_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == pytest.approx(2 / 8)
    assert sig.permutation_test([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    rng = np.random.default_rng(1)
    b = rng.random(500)
    assert sig.permutation_test(b + 0.2, b, n_resamples=2000) == pytest.approx(1 / 2001)
    a = b + rng.normal(0, 0.1, 500)
    a -= (a - b).mean()  # no effect at all
    null = sig.permutation_test(a, b, n_resamples=2000, seed=3)
    assert null > 0.9
    assert null == sig.permutation_test(a, b, n_resamples=2000, seed=3)


def test_holm_on_known_vector():
    # Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max.
    adjusted = sig.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(sig.holm([np.nan, 0.01, 0.02]), [np.nan, 0.02, 0.02])
    np.testing.assert_allclose(sig.holm([0.5, 0.9]), [1.0, 1.0])
    assert sig.holm([]).shape == (0,)


def test_cohens_dz_and_compare():
    a, b = np.array([3.0, 5.0, 7.0, 9.0, 11.0]), np.array([2.0, 3.0, 4.0, 5.0, 6.0])
    assert sig.cohens_dz(a, b) == pytest.approx(3 / math.sqrt(2.5))
    c = sig.correct([sig.compare("d", "m", "ref", a, b, n_resamples=1000)])[0]
    assert c.n == 5 and c.diff == pytest.approx(3.0)
    assert c.p_t_holm == pytest.approx(c.p_t) and c.p_perm == pytest.approx(2 / 32)


def test_per_user_vectors_align_seeds_and_case_order():
    users, values = per_user(np.array([5, 3, 5]), np.array([0, 1, 9]), "hr@5")
    assert users.tolist() == [3, 5] and values.tolist() == [1.0, 0.5]  # user 5: mean of 1 and 0
    with pytest.raises(Exception, match="unknown metric"):
        per_user(users, values, "auc")


def test_seed_average_matches_summary(tmp_path):
    suite_dir = write_fake_results(tmp_path, models=("sasrec", "twin"), extras=False)
    res = load_results(suite_dir)
    users, values = seed_averaged(res.runs_of("synthetic", "sasrec"), "ndcg@10")
    assert users.tolist() == list(range(1, 301))
    mean_over_seeds = np.mean([r.row["test"]["ndcg@10"] for r in res.runs_of("synthetic",
                                                                                "sasrec")])
    assert values.mean() == pytest.approx(mean_over_seeds)
    twin = seed_averaged(res.runs_of("synthetic", "twin"), "ndcg@10")
    np.testing.assert_array_equal(twin[1], values)  # stored in another case order


# -- report --------------------------------------------------------------------------------------

def test_report_is_fast_and_byte_identical_when_rerendered(suite6, tmp_path):
    suite_dir, report, cpu_seconds = suite6
    assert cpu_seconds < 60
    render_report(suite_dir, suite_dir.parent, tmp_path)
    first = sorted(p.relative_to(report) for p in report.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "six") for p in (tmp_path / "six").rglob("*")
                    if p.is_file())
    assert first == second and len(first) >= 9
    for rel in first:
        assert (report / rel).read_bytes() == (tmp_path / "six" / rel).read_bytes(), rel


TABLES = ("main-synthetic", "valid-test-synthetic", "significance-reference",
          "pairwise-synthetic", "signals-synthetic", "robustness-synthetic-missing-image",
          "diagnostics", "cost-synthetic", "sweeps")
FIGURES = ("main", "significance", "pairwise", "signals", "robustness", "diagnostics",
           "diagnostics-training", "training", "sweeps")


def test_report_sections(suite6):
    _, report, _ = suite6
    page = (report / "report.html").read_text()
    for table in TABLES:
        assert f'<table id="tab-{table}">' in page, table
    for figure in FIGURES:
        assert f'<figure id="fig-{figure}"><img' in page, figure
    ids = re.findall(r' id="([^"]*)"', page)
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z][a-z0-9-]*", i) for i in ids)
    assert page.index('id="findings"') < page.index('id="caveats"') < page.index('id="main"')
    assert "Not run for this suite" not in page
    # one card per model, as a table, its raw JSON folded; one fold of diagnostics entries
    assert page.count('<div class="card"') == 6 and page.count("<details>") == 7
    assert page.count("Raw provenance (JSON)") == 6
    assert "http://" not in page and "https://" not in page and "<script" not in page
    md = (report / "report.md").read_text()
    assert "**0." in md and "(figures/significance.png)" in md and md.count("<details>") == 7
    json_lines = md.split("```json")[1:]
    assert all(part.index("```") < part.index("</details>") for part in json_lines)  # folded
    tex = (report / "tables.tex").read_text()
    assert "\\resizebox" not in tex and "\\textbf{" in tex and "$\\pm$" in tex
    assert "\\label{tab:main-synthetic-1}" in tex and "(part 2 of" in tex  # split, not scaled
    assert (report / "figures" / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert '<table id="tab-provenance">' in page and "\\label{tab:provenance}" not in tex


def test_report_tables_bold_best_and_verdicts(tmp_path):
    suite_dir = write_fake_results(tmp_path, models=("sasrec", "mostpop", "good", "twin"))
    doc = build_document(load_results(suite_dir), ReportOptions(n_resamples=2000))
    tables = {t.label: t for t in doc.tables()}
    main_rows = {r[0].text: r for r in tables["main-synthetic"].rows}
    assert all(c.bold for c in main_rows["good"][2:])  # the far better model is best everywhere
    assert not any(c.bold for c in main_rows["sasrec"][2:])
    sig_rows = {r[0].text: r for r in tables["significance-reference"].rows}
    assert set(sig_rows) == {"mostpop", "good", "twin"}  # the reference: the first model
    assert sig_rows["good"][-1].text == "higher than sasrec (significant)"
    assert sig_rows["twin"][-1].text == "no significant difference"
    assert sig_rows["twin"][5].text.startswith("+0.0000 [+0.0000, +0.0000]")
    signal_rows = {r[0].text: r for r in tables["signals-synthetic"].rows}
    assert tables["signals-synthetic"].header[1].startswith("visual warm (n=")
    assert all(c.bold for c in signal_rows["good"][1:])
    # the matrix reads row - column: good's row is positive and bold, its column negative
    matrix = {r[0].text: r for r in tables["pairwise-synthetic"].rows}
    header = tables["pairwise-synthetic"].header
    good_vs_sasrec = matrix["good"][header.index("sasrec")]
    assert good_vs_sasrec.text.startswith("+") and good_vs_sasrec.bold
    assert matrix["sasrec"][header.index("good")].text.startswith("-")
    assert matrix["good"][header.index("good")].text == "—"
    valid_test = {r[0].text: r for r in tables["valid-test-synthetic"].rows}
    assert [c.text for c in valid_test["good"][4:]] == [
        f"{r.row['test']['ndcg@10']:.4f}" for r in load_results(suite_dir).runs_of(
            "synthetic", "good")]  # one test value per seed, in seed order


def test_missing_optional_inputs_say_how_to_produce_them(tmp_path):
    suite_dir = write_fake_results(tmp_path, models=("mostpop",), seeds=(0,), extras=False)
    (suite_dir / "runs" / "synthetic" / "mostpop" / "seed-0" / "result.json").unlink()
    doc = build_document(load_results(suite_dir), ReportOptions())
    text = {s.id: " ".join(b for b in s.blocks if isinstance(b, str)) for s in doc.sections}
    assert "run `bench robustness --suite fake`" in text["robustness"]
    assert "run `bench diagnose --suite fake`" in text["diagnostics"]
    assert "run `bench sweep --suite fake`" in text["sweeps"]
    assert "single model" in text["significance"]


def test_sweep_trials_from_csv_as_bench_sweep_writes_them(tmp_path):
    suite_dir = write_fake_results(tmp_path, models=("sasrec",), seeds=(0,), extras=False)
    sweep = tmp_path / "fake-sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"objective": "valid ndcg@10", "studies": [
        {"name": "s1", "dataset": "synthetic", "model": "sasrec", "best_value": 0.3,
         "best_params": {"learning_rate": 0.00123456, "hidden_size": 64},
         "states": {"COMPLETE": 2, "PRUNED": 1}, "importances": {"learning_rate": 0.8,
                                                                 "hidden_size": 0.2}}]}))
    (sweep / "trials.csv").write_text(
        "number,value,state,params_hidden_size,params_learning_rate,study,dataset,model\n"
        "0,0.2,COMPLETE,32,0.01,s1,synthetic,sasrec\n1,,PRUNED,64,0.1,s1,synthetic,sasrec\n"
        "2,0.3,COMPLETE,64,0.00123456,s1,synthetic,sasrec\n9,0.9,COMPLETE,8,0.1,other,x,y\n")
    doc = build_document(load_results(suite_dir), ReportOptions(n_resamples=100))
    row = next(t for t in doc.tables() if t.label == "sweeps").rows[0]
    assert [c.text for c in row] == ["sasrec", "synthetic", "valid ndcg@10", "3", "2", "0.3000",
                                     "hidden_size=64, learning_rate=0.001235",
                                     "learning_rate 0.80, hidden_size 0.20", "no: defaults"]
    assert any(f.name == "sweeps" for f in doc.figures())
    # the rows say which configuration they used, and the caveats how to use the sweep's
    table = next(t for t in doc.tables() if t.label == "valid-test-synthetic")
    assert table.rows[0][1].text == "default (sweep best not used)"
    caveats = " ".join(b for s in doc.sections if s.id == "caveats" for note in s.blocks
                       for bullets in note.blocks for b in bullets.items)
    assert "`bench run --suite fake --tuned`" in caveats


def test_cli_report_and_user_errors(tmp_path, capsys):
    write_fake_results(tmp_path / "r", models=("sasrec", "good"), seeds=(0, 1),
                       datasets=("synthetic", "beauty"), extras=False)
    out = tmp_path / "out"
    assert main(["report", "fake", "--results-dir", str(tmp_path / "r"), "--out", str(out),
                 "--reference", "good", "--metric", "hr@10"]) == 0
    assert "report rendered in" in capsys.readouterr().out
    page = (out / "fake" / "report.html").read_text()
    assert "Reference model: <code>good</code>; significance metric: HR@10" in page
    assert f"--results-dir {tmp_path / 'r'}" in page  # the command that regenerates it
    assert "Holm correction across all 2 pairwise comparisons" in page
    assert '<table id="tab-main-beauty">' in page and '<table id="tab-signals-beauty">' in page
    for argv, message in ((["nosuch"], "no results for 'nosuch'"),
                          (["fake", "--metric", "auc"], "unknown metric 'auc'"),
                          (["fake", "--metric", "ndcg@50"], "not in the stored results"),
                          (["fake", "--reference", "nosuch"], "reference model 'nosuch'")):
        rc = main(["report", *argv, "--results-dir", str(tmp_path / "r"), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


def _render_in_chromium(report: Path, tmp_path: Path) -> dict:
    """Screenshot ``report/report.html`` in headless Chromium (not blank) and return what the
    browser parsed after load: ``{"tables": ["id:rows", ...], "images": [naturalWidth, ...]}``."""
    from PIL import Image

    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--window-size=1400,3000"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--user-data-dir={tmp_path / 'p1'}", f"--screenshot={shot}",
                    (report / "report.html").as_uri()], capture_output=True, timeout=120,
                   check=True)
    image = Image.open(shot).convert("L")
    assert image.size == (1400, 3000)
    assert np.asarray(image).std() > 10  # not a blank page
    # The DOM after load: a copy of the page reports what the browser parsed and decoded.
    probe = tmp_path / "probe.html"
    probe.write_text((report / "report.html").read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => { const d = document.createElement('div');"
        "d.id = 'probe'; d.textContent = JSON.stringify({tables: [...document.querySelectorAll("
        "'table[id]')].map(t => t.id + ':' + t.rows.length), images: [...document.images].map("
        "i => i.naturalWidth)}); document.body.appendChild(d); });</script></body>")))
    dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'p2'}", "--dump-dom",
                          "--virtual-time-budget=5000", probe.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(dom.split('<div id="probe">')[1].split("</div>")[0]
                      .replace("&quot;", '"'))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian: apt-get install "
                                               "chromium); CI installs it in .ci/run")
def test_html_renders_in_headless_chromium(suite6, tmp_path):
    _, report, _ = suite6
    found = _render_in_chromium(report, tmp_path)
    tables = dict(t.rsplit(":", 1) for t in found["tables"])
    for table in TABLES:
        assert int(tables[f"tab-{table}"]) > 1, table
    assert len(found["images"]) == len(FIGURES) and min(found["images"]) > 100


EXAMPLE = Path(__file__).resolve().parents[1] / "reports" / "accuracy"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian: apt-get install "
                                               "chromium); CI installs it in .ci/run")
def test_committed_example_report_renders(tmp_path):
    """The committed example (README: regenerated from the default suite) loads in a browser
    with every table and figure it names; its HTML ids are unique."""
    html = (EXAMPLE / "report.html").read_text()
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert ids and len(ids) == len(set(ids))
    found = _render_in_chromium(EXAMPLE, tmp_path)
    assert len(found["tables"]) >= 5 and all(int(t.rsplit(":", 1)[1]) > 1 for t in found["tables"])
    assert found["images"] and min(found["images"]) > 100


def test_committed_example_findings_match_its_tables():
    """A claim of the committed example's Findings, recomputed from its own main table: the
    model it names as the highest mean test NDCG@10 has that value, and no row is higher."""
    md = (EXAMPLE / "report.md").read_text()
    claim = re.search(r"Highest mean test NDCG@10[^:]*: `([^`]+)` \(([0-9.]+) ± ", md)
    assert claim, "the Findings name no best model"
    table = md.split("**Test accuracy on ")[1].split("\n\n", 2)[1]
    header, _, *rows = [[c.strip(" *") for c in line.strip("|").split("|")]
                        for line in table.splitlines()]
    col = header.index("NDCG@10")
    means = {row[0].strip("`"): float(row[col].split("±")[0]) for row in rows}
    assert means[claim.group(1)] == pytest.approx(float(claim.group(2)), abs=5e-5)
    assert max(means.values()) == pytest.approx(float(claim.group(2)), abs=5e-5)


def test_world_check_section_states_each_expectation(tmp_path):
    """The report shows the suite's world check (what `bench run` stored), a failure in bold."""
    from benchmark.worldcheck import world_check

    suite_dir = write_fake_results(tmp_path, models=("sasrec", "mostpop", "good"), extras=False)
    doc = build_document(load_results(suite_dir), ReportOptions())
    assert "No world check" in " ".join(b for s in doc.sections if s.id == "world-check"
                                        for b in s.blocks if isinstance(b, str))
    rows = json.loads((suite_dir / "summary.json").read_text())["rows"]
    check = world_check(rows, "synthetic")
    assert check["applies"] and check["expectations"]
    (suite_dir / "world_check.json").write_text(json.dumps({"synthetic": check}))
    doc = build_document(load_results(suite_dir), ReportOptions())
    table = {t.label: t for t in doc.tables()}["world-check-synthetic"]
    assert [r[0].text for r in table.rows] == [e["id"] for e in check["expectations"]]
    for row, e in zip(table.rows, check["expectations"]):
        assert row[2].text == e["status"].upper() and row[2].bold == (e["status"] == "fail")


# -- findings, caveats, diagnostics, LaTeX -------------------------------------------------------

def _bullets(doc, section: str) -> list[str]:
    from benchmark.report.document import Bullets, Note

    blocks = next(s for s in doc.sections if s.id == section).blocks
    blocks = [x for b in blocks for x in (b.blocks if isinstance(b, Note) else [b])]
    return [item for b in blocks if isinstance(b, Bullets) for item in b.items]


def test_findings_recompute_a_claim_from_the_per_user_values(tmp_path):
    """The reference's "significantly lower than `good`" claim: Δ and the Holm p recomputed
    here from the stored ranks, with the tests applied pair by pair and Holm over all pairs."""
    models = ("sasrec", "mostpop", "good", "twin")
    suite_dir = write_fake_results(tmp_path, models=models, extras=False)
    res = load_results(suite_dir)
    doc = build_document(res, ReportOptions(n_resamples=2000))
    found = _bullets(doc, "findings")
    vectors = {m: seed_averaged(res.runs_of("synthetic", m), "ndcg@10")[1] for m in models}
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    p_t = [stats.ttest_rel(vectors[a], vectors[b]).pvalue if not np.all(vectors[a] == vectors[b])
           else 1.0 for a, b in pairs]
    p_perm = [sig.permutation_test(vectors[a], vectors[b], 2000) for a, b in pairs]
    holm_t, holm_perm = sig.holm(p_t), sig.holm(p_perm)
    k = pairs.index(("sasrec", "good"))
    diff = float(np.mean(vectors["sasrec"] - vectors["good"]))
    p_holm = max(holm_t[k], holm_perm[k])
    assert diff < 0 and p_holm <= 0.05
    lower = next(b for b in found if b.startswith("`sasrec` (the reference) is significantly "
                                                    "lower than:"))
    claim = re.search(r"`good` \(Δ = ([+-]\d\.\d{4}) \[95% CI [^\]]*\], d_z [^,]*, Holm p "
                      r"([^)]*)\)", lower)
    assert claim, lower
    assert float(claim.group(1)) == pytest.approx(diff, abs=5e-5)
    assert float(claim.group(2)) == pytest.approx(p_holm, rel=1e-3)
    same = next(b for b in found if "shows no significant difference" in b)
    assert "`twin` (Δ = +0.0000" in same
    # the strongest floor (mostpop, a registry floor): only `good` is significantly above it
    floor = next(b for b in found if b.startswith("Against the strongest floor"))
    assert "1 of 3 trained models score significantly higher (`good`)" in floor
    top = next(b for b in found if b.startswith("Highest mean test NDCG@10"))
    assert top.startswith("Highest mean test NDCG@10: `good`")


def test_findings_say_when_no_trained_model_beats_the_floor(tmp_path):
    suite_dir = write_fake_results(tmp_path, models=("sasrec", "mostpop"), extras=False)
    doc = build_document(load_results(suite_dir), ReportOptions(n_resamples=500))
    floor = next(b for b in _bullets(doc, "findings") if "strongest floor" in b)
    assert "no trained model scores significantly higher than `mostpop`" in floor
    assert "Modality use was not diagnosed" in " ".join(_bullets(doc, "findings"))


def test_caveats_come_from_the_cards(tmp_path):
    suite_dir = write_fake_results(tmp_path, models=("sasrec", "vlm"), seeds=(0,), extras=False)
    path = suite_dir / "runs" / "synthetic" / "vlm" / "seed-0" / "result.json"
    result = json.loads(path.read_text())
    result["provenance"]["content"] = {
        "text": {"encoder": "harness-clip (pre-trained by the harness)", "missing_items": 0},
        "vlm": {"stand_in": True, "stand_in_note": "Random stand-in: says nothing."},
        "stage": {"vlm": {"stand_in": True, "stand_in_kind": "random"}}}
    result["provenance"]["config"]["params"]["epochs"] = 5  # best epoch 4 of 5: at the cap
    path.write_text(json.dumps(result))
    doc = build_document(load_results(suite_dir), ReportOptions(n_resamples=200))
    caveats = _bullets(doc, "caveats")
    assert "Stand-in backbone for `vlm`: Random stand-in: says nothing." in caveats
    assert sum("Stand-in" in c for c in caveats) == 1  # the stage's copy is not a second one
    assert any(c.startswith('Content encoder "harness-clip (pre-trained by the harness)" feeds '
                            "`vlm` (text)") for c in caveats)
    assert any(c.startswith("Best validation epoch = the last one allowed by the epoch cap: "
                            "`vlm` (cap 5 epochs, 1 of 1 seed(s))") for c in caveats)
    assert any("no sweep was found" in c for c in caveats)
    assert any(c.startswith("Only 1 seed(s)") for c in caveats)
    # the card shows the content section as rows; JSON only in the fold
    card = next(b for s in doc.sections for b in s.blocks if getattr(b, "id", "") ==
                "synthetic-vlm")
    fields = dict(card.fields)
    assert fields["content: vlm"] == "stand_in=true, stand_in_note=Random stand-in: says nothing."
    assert fields["content: text.encoder"] == "harness-clip (pre-trained by the harness)"
    assert "None" not in " ".join(fields.values()) and "{}" not in " ".join(fields.values())


SIX = ("sasrec", "mostpop", "good", "twin", "m5", "m6")


def _by_hand(cases: dict[int, tuple]) -> tuple[list[float], float, float, float]:
    """Per-seed contributions (clean - without) / clean on the cell, their mean and the 95%
    t-interval over seeds, computed here from the planted cases."""
    shares = [(np.mean(c) - np.mean(w)) / np.mean(c) for c, w in cases.values()]
    mean = float(np.mean(shares))
    half = stats.t.ppf(0.975, len(shares) - 1) * np.std(shares, ddof=1) / math.sqrt(len(shares))
    return shares, mean, mean - half, mean + half


def _holm_by_hand(model_cases: dict) -> dict[str, float]:
    """The decisive Holm p of each modality: paired t-test and sign-flip permutation test on the
    seed-averaged per-user values, Holm over the two modalities, the larger of the two."""
    pooled = {mod: (np.mean([c for c, _ in cs.values()], axis=0),
                    np.mean([w for _, w in cs.values()], axis=0))
              for mod, cs in model_cases.items()}
    p_t = [stats.ttest_rel(*pooled[m]).pvalue if not np.array_equal(*pooled[m]) else 1.0
           for m in pooled]
    p_perm = [sig.permutation_test(*pooled[m], DIAG_RESAMPLES) for m in pooled]
    holm = np.maximum(sig.holm(p_t), sig.holm(p_perm))
    return dict(zip(pooled, holm))


def test_diagnostics_table_and_chart_show_the_verdicts_over_seeds(tmp_path, monkeypatch):
    """The schema-2 file `bench diagnose` writes: one verdict over the seeds per model, one row
    per modality with the numbers of its evidence, and the chart drawn from the same signed
    contributions (a negative one stays negative)."""
    from benchmark.report import plots

    suite_dir = write_fake_results(tmp_path, models=SIX, n_users=200)
    drawn = []
    real_chart = plots.contribution_chart
    monkeypatch.setattr(plots, "contribution_chart",
                        lambda panels, xlabel: drawn.append(panels) or real_chart(panels, xlabel))
    doc = build_document(load_results(suite_dir), ReportOptions(n_resamples=200))
    table = next(t for t in doc.tables() if t.label == "diagnostics")
    assert table.header == ["model", "modality", "outcome (status)", "seeds", "cell (users)",
                            "clean → without (NDCG@10)", "contribution [95% CI over seeds]",
                            "Holm p", "state"]
    rows: dict[str, list] = {}
    for row in table.rows:  # a model's columns are on its first row only
        rows.setdefault(row[0].text or list(rows)[-1], []).append(row)
    assert list(rows) == list(SIX) and all(len(r) == 2 for r in rows.values())
    outcomes = {m: (r[0][2].text, r[0][2].bold) for m, r in rows.items()}
    assert outcomes == {"sasrec": ("content ignored (pass)", False),
                        "mostpop": ("content ignored (pass)", False),
                        "good": ("uses both (pass)", False),
                        "twin": ("collapsed onto text (fail)", True),
                        "m5": ("images hurt (fail)", True),
                        "m6": ("inconclusive (warn)", False)}
    cases = planted_model_cases(SIX, (0, 1, 2))
    twin = [[c.text for c in r] for r in rows["twin"]]
    assert twin[0][:4] == ["twin", "image", "collapsed onto text (fail)", "0, 1, 2"]
    assert twin[1][:4] == ["", "text", "", ""]
    holm = _holm_by_hand(cases["twin"])
    for row, mod, cell in zip(twin, ("image", "text"), ("signal=visual,target=cold",
                                                         "signal=textual,target=cold")):
        _, mean, low, high = _by_hand(cases["twin"][mod])
        clean = np.mean([np.mean(c) for c, _ in cases["twin"][mod].values()])
        without = np.mean([np.mean(w) for _, w in cases["twin"][mod].values()])
        assert row[4:] == [f"{cell} (200)", f"{clean:.4f} → {without:.4f}",
                           f"{mean:+.1%} [{low:+.1%}, {high:+.1%}]", fmt_p(holm[mod]),
                           "none" if mod == "image" else "used"]
    assert twin[0][6] == "+0.0% [+0.0%, +0.0%]" and twin[0][7] == "1.0000"
    assert [r[8].text for r in rows["m6"]] == ["inconclusive", "used"]
    # the chart: the verdicts' signed contributions and CIs over seeds, never clamped; hollow
    # where no effect is established
    ((panel,),) = drawn
    title, models, values = panel
    assert (title, models) == ("synthetic", list(SIX))
    m5_image = values["image"][SIX.index("m5")]
    _, mean, low, high = _by_hand(cases["m5"]["image"])
    assert m5_image == pytest.approx((mean, low, high, True)) and high < 0
    assert values["image"][SIX.index("twin")][3] is False  # state none: hollow
    assert any(f.name == "diagnostics" for f in doc.figures())


def test_findings_name_the_collapse_with_the_fixtures_numbers(tmp_path):
    """The Findings' collapse sentence: the outcome, status and given modalities of the verdict,
    and each modality's contribution with its CI over seeds and Holm p, recomputed here from the
    planted per-user cases."""
    suite_dir = write_fake_results(tmp_path, models=SIX, n_users=200)
    doc = build_document(load_results(suite_dir), ReportOptions(n_resamples=200))
    found = _bullets(doc, "findings")
    summary = next(b for b in found if b.startswith("Modality use"))
    assert summary.endswith("content ignored: `sasrec`, `mostpop`; uses both: `good`; collapsed "
                            "onto text: `twin`; images hurt: `m5`; inconclusive: `m6`.")
    sentence = next(b for b in found if b.startswith("`twin`: "))
    claim = re.fullmatch(
        r"`twin`: collapsed onto text \(status fail; given image and text; 3 seed\(s\)\): "
        r"image contribution (\S+) \[(\S+), (\S+)\], Holm p (\S+); "
        r"text contribution (\S+) \[(\S+), (\S+)\], Holm p (\S+)\.", sentence)
    assert claim, sentence
    cases = planted_model_cases(SIX, (0, 1, 2))["twin"]
    holm = _holm_by_hand(cases)
    for k, mod in ((1, "image"), (5, "text")):
        _, mean, low, high = _by_hand(cases[mod])
        shown = [float(claim.group(k + i).rstrip("%")) / 100 for i in range(3)]
        assert shown == pytest.approx([mean, low, high], abs=5e-4)
        assert float(claim.group(k + 3)) == pytest.approx(holm[mod], rel=1e-3)
    assert holm["image"] == 1.0 and holm["text"] <= 0.05  # a collapse: text used, image unread
    hurt = next(b for b in found if b.startswith("`m5`: "))
    assert hurt.startswith("`m5`: images hurt (status fail; given image and text; 3 seed(s)): "
                           "image contribution -")
    assert not any(b.startswith(("`good`: ", "`sasrec`: ", "`m6`: ")) for b in found)
    caveats = _bullets(doc, "caveats")
    inconclusive = next(c for c in caveats if c.startswith("Inconclusive evidence"))
    assert inconclusive.startswith("Inconclusive evidence for `m6` (outcome: inconclusive): the "
                                   "test over users and the interval over seeds disagree (image: "
                                   "Holm p ")
    assert "difference clean − without over seeds [" in inconclusive  # the interval the rule reads
    assert not any("one seed" in c or "schema-1" in c for c in caveats)


def test_diagnostics_with_one_seed_and_a_model_not_reached(tmp_path):
    suite_dir = write_fake_results(tmp_path, models=("sasrec", "twin"), seeds=(0,))
    path = suite_dir / "diagnostics.json"
    doc = json.loads(path.read_text())
    doc["models"].append({"model": "internal", "dataset": "synthetic", "seed": 0,
                          "status": "warn", "outcome": "inconclusive", "metrics": {},
                          "series": {}, "verdict": "not diagnosed: perturbations do not reach "
                                                   "this model (see robustness.json 'skipped')"})
    path.write_text(json.dumps(doc))
    built = build_document(load_results(suite_dir), ReportOptions(n_resamples=200))
    caveats = _bullets(built, "caveats")
    assert ("Modality verdicts from one seed (`sasrec`, `twin`): the paired test over users "
            "alone decides; training noise is not measured.") in caveats
    assert ("Not diagnosed (the dropout perturbations do not reach the model): `internal` "
            "(seed 0).") in caveats
    table = next(t for t in built.tables() if t.label == "diagnostics")
    assert [c.text for c in table.rows[2]][:4] == ["twin", "image",
                                                   "collapsed onto text (fail)", "0"]
    assert table.rows[3][6].text.count("%") == 1  # one seed: no interval
    # a verdict without its evidence stops the report with one line naming the file
    del doc["verdicts"][0]["modalities"]
    path.write_text(json.dumps(doc))
    with pytest.raises(Exception, match=r"diagnostics.json: verdicts\[0\] lacks modalities"):
        load_results(suite_dir)


def test_schema1_diagnostics_still_read(tmp_path):
    """A file of the earlier `bench diagnose` (schema 1: per-seed verdicts only; the committed
    ml-100k reference) still renders: outcomes, overall contributions, no test, and a caveat."""
    suite_dir = write_fake_results(tmp_path, models=("sasrec", "mostpop"), seeds=(0,),
                                   extras=False)
    reference = Path(__file__).parent.parent / "results/reference/robustness-ml100k"
    shutil.copy(reference / "diagnostics.json", suite_dir / "diagnostics.json")
    old = json.loads((suite_dir / "diagnostics.json").read_text())
    assert "schema" not in old and "verdicts" not in old
    doc = build_document(load_results(suite_dir), ReportOptions(n_resamples=200))
    table = next(t for t in doc.tables() if t.label == "diagnostics")
    clip = [[c.text for c in r] for r in table.rows[4:6]]
    metrics = next(e for e in old["models"] if e["model"] == "clip_sasrec")["metrics"]
    assert clip[0] == ["clip_sasrec", "image", "collapsed onto text (fail)", "0", "overall",
                       f"{metrics['clean_ndcg@10']:.4f} → {metrics['no_image_ndcg@10']:.4f}",
                       f"{metrics['image_contribution']:+.1%}", "—", "—"]
    assert [clip[1][1], clip[1][4]] == ["text", "overall"]
    assert any(f.name == "diagnostics" for f in doc.figures())
    found = _bullets(doc, "findings")
    assert next(b for b in found if b.startswith("Modality use")).endswith(
        "collapsed onto text: `unisrec`, `clip_sasrec`, `vlm2rec`; uses both modalities: "
        "`mmsrec`, `vlm2rec_sasrec`.")
    assert next(b for b in found if b.startswith("`clip_sasrec`: ")) == (
        "`clip_sasrec`: collapsed onto text (status fail; 1 seed(s)): image contribution "
        f"{metrics['image_contribution']:+.1%}; text contribution "
        f"{metrics['text_contribution']:+.1%}.")
    assert any(c.startswith("The modality verdicts come from a schema-1 `diagnostics.json`")
               for c in _bullets(doc, "caveats"))


def test_training_panels_share_one_training_and_draw_chance():
    from benchmark.report.build import _training_series_panels

    series = {"step": [0, 1, 2], "p_text": [0.02, 0.05, 0.07], "p_image": [0.016, 0.02, 0.03],
              "grad_text": [1.0, None, 0.5]}
    entries = [{"model": m, "dataset": "synthetic", "seed": s, "verdict": "x",
                "training": series} for m in ("vlm2rec", "vlm2rec_sasrec") for s in (0, 1)]
    panels = _training_series_panels(entries, {("synthetic", "vlm2rec"): 1 / 64})
    assert [p.title for p in panels] == [
        "vlm2rec = vlm2rec_sasrec (synthetic), one shared training\nunimodal retrieval",
        "vlm2rec = vlm2rec_sasrec (synthetic), one shared training\ngradient norm"]
    chance = next(s for s in panels[0].series if s.kind == "reference")
    assert chance.label == "chance" and chance.y == [1 / 64] * 3
    assert [s.label for s in panels[1].series] == ["grad_text"]  # no chance for a norm
    only_norms = [{"model": "internal", "verdict": "x",
                   "training": {"step": [0, 1], "grad_text": [0.0, 0.0]}}]
    panels = _training_series_panels(only_norms, {})
    assert [p.title for p in panels] == ["internal\nunimodal retrieval: not recorded",
                                         "internal\ngradient norm"]
    assert _training_series_panels([{**only_norms[0], "training": {"step": [0]}}], {}) == []


def test_latex_tables_are_split_or_long_never_scaled():
    from benchmark.report.document import (
        TEX_WIDTH_PT,
        Cell,
        Document,
        Section,
        Table,
        latex_parts,
        table_width_pt,
        to_latex,
    )

    wide = Table("wide", "Wide", ["model", *(f"metric {i}" for i in range(12))],
                 [[Cell("a-model")] + [Cell("0.0453 ± 0.0000")] * 12 for _ in range(3)])
    long = Table("long", "Long", ["model", "value"],
                 [[Cell(f"m{i}"), Cell("0.1")] for i in range(45)])
    prose = Table("prose", "Prose", ["id", "claim"], [[Cell("x"), Cell("word " * 30)]])
    tex = to_latex(Document("t", "", [Section("s", "S", [wide, long, prose])]))
    parts = latex_parts(wide)
    assert len(parts) >= 3 and all(p[0] == 0 for p in parts)  # the model column repeats
    assert sorted({j for p in parts for j in p}) == list(range(13))
    assert all(table_width_pt(wide, p) <= TEX_WIDTH_PT for p in parts)
    assert tex.count("\\caption{Wide (part ") == len(parts)
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert "\\resizebox" not in tex and body.count("\\footnotesize") == len(parts) + 2
    assert "\\begin{longtable}{@{}lr@{}}" in tex and "\\endhead" in tex
    assert "\\begin{tabular}{@{}lp{" in tex  # a sentence column wraps


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (Debian: "
                    "apt-get install texlive-latex-base texlive-latex-recommended)")
def test_tables_tex_compiles_without_overfull_boxes(suite6, tmp_path):
    """tables.tex, and a long, a wide and a prose table, in a 10 pt article: it compiles, and
    no table is wider than the text (LaTeX reports an overfull box for a line that does not
    fit)."""
    from benchmark.report.document import Cell, Document, Section, Table, to_latex

    _, report, _ = suite6
    long = Table("long", "Long", ["model", "value [95% CI]"],
                 [[Cell(f"m{i}"), Cell("-0.0052 [-0.0086, -0.0020]")] for i in range(45)])
    wide = Table("wide", "Wide", ["model", *(f"metric {i}" for i in range(12))],
                 [[Cell("a-model")] + [Cell("0.0453 ± 0.0000")] * 12])
    prose = Table("prose", "Prose", ["id", "claim"], [[Cell("x"), Cell("word " * 40)]])
    (tmp_path / "extra.tex").write_text(to_latex(Document("t", "", [
        Section("s", "S", [long, wide, prose])])))
    (tmp_path / "doc.tex").write_text(
        "\\documentclass[10pt]{article}\n\\usepackage[T1]{fontenc}\n"
        "\\usepackage{booktabs,longtable}\n\\begin{document}\n"
        f"\\input{{{report / 'tables.tex'}}}\n\\input{{extra.tex}}\n\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    assert "Overfull \\hbox" not in log


@pytest.mark.parametrize("kind", ["section", "table"])
def test_duplicate_ids_are_refused(kind):
    from benchmark.report.document import Cell, Document, Section, Table, to_html

    t = Table("main", "x", ["a"], [[Cell("1")]])
    sections = ([Section("main", "A"), Section("main", "B")] if kind == "section"
                else [Section("a", "A", [t]), Section("b", "B", [t])])
    with pytest.raises(ValueError, match="duplicated"):
        to_html(Document("t", "", sections))


def test_run_tuned_uses_the_sweeps_best_configuration_and_the_report_says_so(
        tiny_dataset, tmp_path, capsys):
    """`bench run --tuned` runs each model with its study's best validation configuration
    (checked against the study this run would have swept); the card and the report say so."""
    from benchmark.cli import _suite_from_args, build_parser
    from benchmark.runner import Options, prepare_dataset
    from benchmark.sweep import study_name

    results = tmp_path / "r"
    argv = ["run", "--tuned", "--dataset", str(tiny_dataset), "--models", "mostpop,sasrec",
            "--seeds", "0", "--epochs", "1", "--results-dir", str(results), "-q",
            "--no-tracking"]
    assert main(argv) == 2  # no sweep yet: one line, nothing run
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: --tuned: no sweep of suite 'accuracy'")
    assert len(err.splitlines()) == 1 and not (results / "accuracy").exists()

    suite = _suite_from_args(build_parser().parse_args(argv))
    name = study_name(suite, prepare_dataset(suite.datasets[0], suite, Options()), "sasrec")
    best = {"hidden_size": 32, "learning_rate": 0.005, "n_layers": 2}
    study = {"name": "accuracy.tiny.sasrec.0000000000", "dataset": "tiny", "model": "sasrec",
             "best_trial": 3, "best_value": 0.1234, "best_params": best, "trials": []}
    (results / "accuracy-sweep").mkdir(parents=True)
    sweep_file = results / "accuracy-sweep" / "sweep.json"
    sweep_file.write_text(json.dumps({"studies": [study], "untuned": ["mostpop"]}))
    assert main(argv) == 2  # a study of other data or settings is not this run's
    err = capsys.readouterr().err.strip()
    assert "was run with other data, split, first seed or fixed parameters" in err
    assert len(err.splitlines()) == 1 and not (results / "accuracy" / "runs").exists()

    sweep_file.write_text(json.dumps({"studies": [{**study, "name": name}],
                                      "untuned": ["mostpop"]}))
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "model sasrec [tuned on tiny: sweep trial 3]:" in plan and '"hidden_size": 32' in plan
    assert main(argv) == 0
    card = json.loads((results / "accuracy" / "runs" / "tiny" / "sasrec" / "seed-0" /
                       "result.json").read_text())["provenance"]
    assert {k: card["config"]["params"][k] for k in best} == best
    assert card["tuning"]["best_trial"] == 3 and card["tuning"]["study"] == name
    assert 0 < card["parameters"]["trainable"] <= card["parameters"]["total"]

    doc = build_document(load_results(results / "accuracy"), ReportOptions(n_resamples=200))
    tables = {t.label: t for t in doc.tables()}
    config = {r[0].text: r[1].text for r in tables["valid-test-tiny"].rows}
    assert config == {"mostpop": "default (nothing to tune)",
                      "sasrec": "tuned: sweep trial 3 (valid 0.1234)"}
    assert tables["sweeps"].rows[0][-1].text == "yes"
    cost = {r[0].text: r for r in tables["cost-tiny"].rows}
    assert cost["sasrec"][6].text == f"{card['parameters']['total']:,}"
