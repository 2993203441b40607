"""The throughput / MFU benchmark of the GPU check (methods/vlm2rec/bench.py), run on CPU at the
tiny shape: its FLOP count, its figures, and the fall-back to gradient checkpointing."""

from __future__ import annotations

import json

import pytest
import torch

from methods.vlm2rec import bench


def test_step_flops_by_hand():
    shape = {"n_layers": 3, "d_q": 8, "n_lm": 1000, "n_lora": 10}
    # two prompts of 5 and 2 tokens: (4 * 1000 + 6 * 10) * 7 + 6 * 3 * 8 * (25 + 4)
    assert bench.step_flops(shape, [5, 2]) == 4060 * 7 + 144 * 29
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == bench.peak_flops("NVIDIA H200") == 989.4e12
    assert bench.peak_flops("cpu") is None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    torch_threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    lines = []
    report = bench.run(size="tiny", device="cpu", dtype="float32", n_items=24, image_px=32,
                       pairs=[4, 6], steps=2, encode_batch=8, threads=1, out=out,
                       work_dir=tmp_path_factory.mktemp("assets"), echo=lines.append)
    torch.set_num_threads(torch_threads)
    return report, lines, out


def test_smoke_run_reports_every_figure(smoke):
    report, lines, out = smoke
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
    assert [next(iter(json.loads(line))) for line in lines] == [
        "model", "encoding", "step_4", "step_6", "best", "total_s"]
    model = report["model"]
    assert model["n_layers"] == 2 and model["d_q"] == 64
    # LoRA r=16 on the 7 projections of 2 layers (hidden 64, k/v 32, MLP 128): r * (in + out)
    sides = {"q": 64 + 64, "k": 64 + 32, "v": 64 + 32, "o": 64 + 64, "gate": 64 + 128,
             "up": 64 + 128, "down": 128 + 64}
    assert model["n_lora"] == 2 * 16 * sum(sides.values())
    enc = report["encoding"]
    assert enc["items_per_s"] > 0 and enc["users_per_s"] > 0
    assert enc["lm_tokens_per_user"] > enc["lm_tokens_per_item"] > 0
    for pairs in (4, 6):
        row = report[f"step_{pairs}"]
        assert row["pairs"] == pairs and row["mfu"] is None  # no peak known for a CPU
        assert row["lm_tokens_per_step"] > 0 and 0 <= row["padding_share"] < 1
        # FLOPs per token between the linear part alone and linear + attention
        per_token = 4 * model["n_lm"] + 6 * model["n_lora"]
        flops = row["model_tflop_per_step"] * 1e12
        assert per_token * row["lm_tokens_per_step"] < flops < 3 * per_token * row[
            "lm_tokens_per_step"]
        assert row["model_tflops_per_s"] == pytest.approx(flops / row["ms_per_step"] / 1e9)
    assert report["best"]["pairs"] in (4, 6)


def test_out_of_memory_turns_checkpointing_on(monkeypatch, tmp_path):
    from methods.vlm2rec.embedder import VLMEmbedder

    real = VLMEmbedder.encode_users

    def tight(self, histories, unimodal=True):
        if self.training and not self.gradient_checkpointing:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, histories, unimodal)

    monkeypatch.setattr(VLMEmbedder, "encode_users", tight)
    lines = []
    report = bench.run(size="tiny", device="cpu", dtype="float32", n_items=16, image_px=32,
                       pairs=[4], steps=1, encode_batch=8, threads=1, work_dir=tmp_path,
                       echo=lines.append)
    assert "checkpointing" in report
    assert report["step_4"]["gradient_checkpointing"] is True
    report = bench.run(size="tiny", device="cpu", dtype="float32", n_items=16, image_px=32,
                       pairs=[4], steps=1, encode_batch=8, threads=1, checkpointing="off",
                       work_dir=tmp_path / "off", echo=lines.append)
    assert report["stopped"] == "out of memory at 4 pairs" and "best" not in report
