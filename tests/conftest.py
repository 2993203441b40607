"""Shared fixtures: small datasets built in temporary folders (never the real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def random_sequences(n_users: int = 40, n_items: int = 60, min_len: int = 5, max_len: int = 15,
                     seed: int = 0) -> list[tuple[str, str, float]]:
    """Interactions of users with a weak next-item structure, integer timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 0
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(0, n_items))
        items = [(start + 2 * k + int(rng.integers(0, 3))) % n_items for k in range(length)]
        items = list(dict.fromkeys(items))
        for i in items:
            rows.append((f"u{u}", f"i{i}", float(t)))
            t += 1
    rng.shuffle(rows)  # file order differs from time order
    return rows


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    from benchmark.data.dataset import write_dataset

    rows = random_sequences()
    items = sorted({r[1] for r in rows}, key=lambda s: int(s[1:]))
    return write_dataset(tmp_path / "tiny", "tiny", rows,
                         [(i, f"title {i}", f"text of {i}", None) for i in items])


@pytest.fixture(autouse=True)
def _tiny_corpus_clip(request, monkeypatch):
    """Tests never pay for the default corpus pre-training of ``harness-clip`` (tens of seconds
    per fresh cache): a tiny recipe of the same kind stands in. ``tests/test_encoders.py``
    checks the corpus recipe itself. A test marked ``corpus_clip`` keeps the default recipe
    (the tiny one's features carry too little colour, shape, brand or product for a content
    model to rank cold items)."""
    from dataclasses import replace

    from benchmark.encoders import harness_clip

    if request.node.get_closest_marker("corpus_clip"):
        return

    monkeypatch.setattr(harness_clip, "CORPUS_RECIPE", replace(
        harness_clip.CORPUS_RECIPE, width=32, heads=2, steps=12, batch_size=32,
        corpus_size=96))


@pytest.fixture(autouse=True)
def _tiny_vlm_pretraining(monkeypatch):
    """Likewise for VLM2Rec's ``tiny`` preset: its harness-pretrained backbone is pre-trained
    for a few steps on a small corpus (same recipe kind and code path) without the held-out
    probes; ``tests/test_vlm2rec_pretrain.py`` checks the recipe itself."""
    from benchmark.registry import get_model_spec
    from methods.vlm2rec import pretrain

    monkeypatch.setattr(pretrain, "PROBE_N", 0)
    tiny = get_model_spec("vlm2rec").presets["tiny"]
    monkeypatch.setitem(tiny, "vlm", tiny["vlm"] + ":steps=3,batch=4,corpus_n=64,bag_len=2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and OpenMP spinning on a busy box is ruinous);
    use as ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
