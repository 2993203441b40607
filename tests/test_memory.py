"""Freed memory stays in the process (benchmark.memory): a batch loop that allocates the same
large tensors every step page-faults once, not every step; training and evaluation set it up."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 12 steps after 10 warm-up ones, each allocating and freeing two 40 MB tensors (above glibc's 32 MB mmap ceiling)
LOOP = """
import json, resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "retain":
    from benchmark.memory import retain_freed_memory
    assert retain_freed_memory()
def step():
    a = torch.ones(10_000_000); b = a * 2; return float(b[-1])
for _ in range(10):  # the heap settles (glibc places small blocks first)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_retained_memory_is_reused_without_page_faults():
    pages = 2 * 12 * 40_000_000 // 4096  # what the loop touches: ~234k pages
    default, retained = _faults("default"), _faults("retain")
    assert default > pages // 2  # glibc's default: every step faults its tensors in again
    assert retained < pages // 20


def test_opt_out_leaves_malloc_alone(monkeypatch):
    from benchmark import memory

    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setenv("BENCH_RETAIN_FREED_MEMORY", "0")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called"))
    assert memory.retain_freed_memory() is False


def test_training_and_evaluation_retain_freed_memory(monkeypatch):
    from benchmark import evaluation, training

    calls = []
    monkeypatch.setattr(evaluation, "retain_freed_memory", lambda: calls.append("eval"))
    monkeypatch.setattr(training, "retain_freed_memory", lambda: calls.append("train"))

    class Loop(training.EpochLoop):
        checkpoint, progress, on_epoch = None, False, None

        def __init__(self):
            import torch

            self.model, self.params = torch.nn.Linear(1, 1), {"epochs": 0, "patience": 0}

    class FakeSplit:
        def train_item_counts(self, n_items):
            import numpy as np

            return np.zeros(n_items, dtype=np.int64)

    evaluation.Evaluator(FakeSplit(), n_items=3, max_len=2)
    Loop().fit()
    assert calls == ["eval", "train"]
