"""The command line: instant listing, one-line errors with exit code 2, a full tracked run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_is_instant_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.time(); from benchmark.cli import main; "
            "main(['list', 'models']); main(['list', 'suites']); "
            "heavy = [m for m in ('torch', 'recbole', 'mlflow', 'transformers', 'optuna') "
            "if m in sys.modules]; print(heavy, time.time() - t)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    elapsed = time.perf_counter() - start
    assert "sasrec" in out and "mostpop" in out and "accuracy" in out
    assert "[]" in out.splitlines()[-1]
    assert elapsed < 1.5  # interpreter start included


@pytest.mark.parametrize("argv, message", [
    (["run", "--models", "sasrek"], "unknown model 'sasrek' (did you mean 'sasrec'?)"),
    (["run", "--suite", "nosuch"], "unknown suite 'nosuch'"),
    (["run", "--dataset", "nosuch-data"], "unknown dataset 'nosuch-data'"),
    (["run", "--epochs", "0"], "--epochs must be >= 1"),
    (["run", "--set", "hidden_size=big"], "parameter 'hidden_size' must be int"),
    (["run", "--set", "hiden_size=8"], "parameter 'hiden_size' (did you mean 'hidden_size'?)"),
    (["run", "--set", "train_mode=sideways"], "train_mode must be one of"),
    (["run", "--preset", "huge"], "has no preset 'huge'"),
    (["run", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--dataset", "ml-100k", "--images", "/nonexistent/posters"], "image folder not found"),
    (["run", "--data-option", "s_v=2.0"], "s_v"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    rc = main([*argv, "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d"),
               "--no-tracking", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("bench: error:")
    assert message in err


@pytest.mark.parametrize("case", ["set", "tracking", "results_file", "results_under_file",
                                  "data_file"])
def test_issue_10_bad_inputs_end_in_one_line_before_any_work(case, tmp_path, capsys):
    """The three inputs of issue 10 that ended in a traceback: tracking on (the default), so
    the tracking check is the one a real run meets; nothing is created or trained."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    args, message = {
        "set": (["--set", "hidden_size=-3"], "model 'sasrec': hidden_size must be >= 1, got -3"),
        "tracking": (["--tracking-uri", "bogus://x"],
                     "tracking URI 'bogus://x': unknown scheme 'bogus'"),
        "results_file": (["--results-dir", str(a_file)], f"--results-dir {a_file} is a file"),
        "results_under_file": (["--results-dir", str(a_file / "sub")],
                               f"--results-dir {a_file / 'sub'} is under a file, {a_file}"),
        "data_file": (["--data-dir", str(a_file)], f"--data-dir {a_file} is a file"),
    }[case]
    argv = ["run", "--models", "sasrec", "--seeds", "0", "--results-dir", str(tmp_path / "r"),
            "--data-dir", str(tmp_path / "d"), "-q", *args]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and err.startswith("bench: error:")
    assert message in err and not out
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()
    assert a_file.read_text() == "not a folder"


def test_unreachable_tracking_server_fails_fast_with_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    rc = main(["run", "--models", "sasrec", "--tracking-uri", f"http://user:secret@127.0.0.1:{port}",
               "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"tracking server http://user:***@127.0.0.1:{port} unreachable" in err
    assert time.perf_counter() - start < 5  # not MLflow's minutes of retries


def test_dry_run_prints_the_resolved_plan_and_touches_nothing(tmp_path):
    """``run --dry-run``: every parameter resolved and checked, no dataset, no result folder,
    and none of the heavy libraries imported (tracking on: the URI is checked without MLflow)."""
    code = ("import sys; from benchmark.cli import main; "
            f"rc = main(['run', '--models', 'sasrec,clip_sasrec', '--set', 'hidden_size=16', "
            f"'--results-dir', {str(tmp_path / 'r')!r}, '--data-dir', {str(tmp_path / 'd')!r}, "
            "'--dry-run']); "
            "heavy = [m for m in ('torch', 'recbole', 'mlflow', 'transformers', 'optuna') "
            "if m in sys.modules]; print(rc, heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    lines = out.splitlines()
    assert lines[-1] == "0 []"
    models = {line.split(":")[0]: json.loads(line.split(": ", 1)[1]) for line in lines
              if line.startswith("model ")}
    assert set(models) == {"model sasrec", "model clip_sasrec"}
    assert models["model sasrec"]["hidden_size"] == 16  # the override over the tiny preset
    assert models["model clip_sasrec"]["inner_size"] == 64  # the suite's preset
    assert f"tracking sqlite:///{(tmp_path / 'r' / 'mlflow.db').resolve()}" in out
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_malformed_suite_and_dataset_files(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nmodels: [sasrec\n")
    assert main(["run", "--suite", str(bad_yaml), "--no-tracking"]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("name: x\ndatasets: [synthetic]\nmodels: [sasrec]\nseeds: [0]\n"
                           "epoch: 3\n")
    assert main(["run", "--suite", str(unknown_key), "--no-tracking"]) == 2
    assert "unknown key(s) epoch" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.inter").write_text("user_id:token\titem_id:token\n1\t2\n3\n")
    assert main(["run", "--dataset", str(bad), "--no-tracking", "-q",
                 "--results-dir", str(tmp_path / "r")]) == 2
    assert "bad.inter:3: expected 2 tab-separated fields" in capsys.readouterr().err


def test_run_writes_summary_tracks_in_mlflow_and_resumes(tiny_dataset, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["run", "--dataset", str(tiny_dataset), "--models", "mostpop,sasrec",
            "--seeds", "0,1", "--epochs", "2", "--results-dir", str(results), "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mostpop" in out and "±" in out
    summary = json.loads((results / "accuracy" / "summary.json").read_text())
    rows = summary["rows"]
    assert {(r["model"], r["seed"]) for r in rows} == {("mostpop", 0), ("mostpop", 1),
                                                         ("sasrec", 0), ("sasrec", 1)}
    for r in rows:
        assert 0 <= r["test"]["ndcg@10"] <= 1 and "hr@20" in r["test"]
        run_dir = Path(r["run_dir"])
        result = json.loads((run_dir / "result.json").read_text())
        card = result["provenance"]
        for key in ("dataset", "split", "config_hash", "config", "code", "packages", "hardware",
                    "seed", "wall_seconds", "mlflow_run_id"):
            assert key in card
        assert (run_dir / "per_case.npz").exists() and not (run_dir / "checkpoint.pt").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench-accuracy")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 4
    sas = next(r for r in children if r.data.tags["model"] == "sasrec")
    assert "test_ndcg_at_10" in sas.data.metrics
    assert len(client.get_metric_history(sas.info.run_id, "valid_ndcg_at_10")) == 2

    stamps = {r["run_dir"]: (Path(r["run_dir"]) / "result.json").stat().st_mtime_ns for r in rows}
    assert main([*argv, "--resume"]) == 0
    again = json.loads((results / "accuracy" / "summary.json").read_text())["rows"]
    assert again == rows
    for run_dir, stamp in stamps.items():
        assert (Path(run_dir) / "result.json").stat().st_mtime_ns == stamp  # nothing re-ran
    # a later call on a subset of the models keeps the other runs in the summary
    assert main(["run", "--dataset", str(tiny_dataset), "--models", "mostpop", "--seeds", "0",
                 "--results-dir", str(results), "-q", "--no-tracking"]) == 0
    kept = json.loads((results / "accuracy" / "summary.json").read_text())["rows"]
    assert [(r["model"], r["seed"]) for r in kept] == [(r["model"], r["seed"]) for r in rows]
    assert kept[1:] == rows[1:]


def test_killed_run_resumes_from_its_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from benchmark import tracking

    results = tmp_path / "results"
    argv = ["run", "--dataset", str(tiny_dataset), "--models", "sasrec", "--seeds", "0",
            "--epochs", "3", "--set", "patience=10", "--results-dir", str(results), "-q",
            "--no-tracking"]
    original = tracking.Tracker.log_metrics

    def die_after_second_epoch(self, run_id, metrics, step=None, prefix=""):
        if step == 1:
            raise KeyboardInterrupt
        return original(self, run_id, metrics, step, prefix)

    monkeypatch.setattr(tracking.Tracker, "log_metrics", die_after_second_epoch)
    assert main(argv) == 130
    run_dir = results / "accuracy" / "runs" / tiny_dataset.name / "sasrec" / "seed-0"
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    monkeypatch.setattr(tracking.Tracker, "log_metrics", original)
    assert main([*argv, "--resume"]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train"]["resumed_from"] == 2 and result["train"]["epochs"] == 3


def test_sampled_evaluation_mode_end_to_end(tiny_dataset, tmp_path, capsys):
    suite = tmp_path / "sampled.yaml"
    suite.write_text(f"name: sampled\ndatasets: [{tiny_dataset}]\nmodels: [mostpop]\n"
                     "seeds: [0]\nevaluation: {mode: sampled, n_negatives: 10, ks: [5, 20]}\n")
    argv = ["run", "--suite", str(suite), "--results-dir", str(tmp_path / "r"), "-q",
            "--no-tracking"]
    assert main(argv) == 0
    row = json.loads((tmp_path / "r" / "sampled" / "summary.json").read_text())["rows"][0]
    assert row["test"]["hr@20"] == 1.0  # 10 negatives + the target: always in the top 20
    assert 0 < row["test"]["hr@5"] < 1
    suite.write_text(suite.read_text().replace("n_negatives: 10", "n_negatives: 1000"))
    assert main(argv) == 2
    assert "items available as negatives" in capsys.readouterr().err


def test_provenance_card_labels_stand_in_content(tmp_path, capsys):
    """A harness-trained CLIP and a random VLM stand-in are named as such in every result."""
    from benchmark.data.synthetic import SyntheticConfig, generate_synthetic

    root = generate_synthetic(tmp_path / "syn", SyntheticConfig(
        n_users=60, n_items=60, seq_len=(5, 8), image_size=16, seed=1))
    results = tmp_path / "r"
    assert main(["run", "--dataset", str(root), "--models", "random,coldfirst,clip_sasrec,vlm2rec",
                 "--seeds", "0", "--epochs", "1", "--results-dir", str(results),
                 "--data-dir", str(tmp_path), "-q", "--no-tracking"]) == 0
    runs = results / "accuracy" / "runs" / "syn"
    clip = json.loads((runs / "clip_sasrec" / "seed-0" / "result.json").read_text())
    assert "not a pretrained CLIP" in clip["provenance"]["content"]["image"]["encoder"]
    # what its features carry: linear probes (warm -> cold items) in the card
    probes = clip["provenance"]["content"]["probes"]
    assert {"image_color", "image_shape", "text_brand", "text_product"} <= set(probes)
    vlm = json.loads((runs / "vlm2rec" / "seed-0" / "result.json").read_text())
    assert vlm["provenance"]["content"]["vlm"]["stand_in"] is True
    # a controlled-modality world: the suite checks itself, stores and prints the check
    (check,) = json.loads((results / "accuracy" / "world_check.json").read_text()).values()
    assert check["applies"] and sum(check["counts"].values()) == len(check["expectations"])
    coldfirst = next(e for e in check["expectations"] if "coldfirst" in json.dumps(e["checks"]))
    assert coldfirst["status"] in ("pass", "fail")
    assert "world check (syn" in capsys.readouterr().out


def test_set_values_parse_like_a_user_types_them():
    """YAML 1.1 reads `2e-3` (no dot) as a string; `--set` takes it as the number it is."""
    from benchmark.cli import _key_values

    parsed = _key_values(["learning_rate=2e-3", "epochs=3", "use_id=true", "vlm=tiny-qwen2-vl",
                          "x=1e5", "word=nan"])
    assert parsed == {"learning_rate": 0.002, "epochs": 3, "use_id": True,
                      "vlm": "tiny-qwen2-vl", "x": 100000.0, "word": "nan"}
    assert isinstance(parsed["epochs"], int)
