"""Splits: leave-one-out semantics, temporal split without leakage, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.data.dataset import load_dataset, write_dataset
from benchmark.errors import ConfigError
from benchmark.split import make_split


def _data(tmp_path, rows, name="d"):
    return load_dataset(write_dataset(tmp_path / name, name, rows, []))


def test_loo_by_hand(tmp_path):
    rows = [("a", "x", 3), ("a", "y", 1), ("a", "z", 2), ("a", "w", 4), ("a", "v", 5),
            ("b", "x", 1), ("b", "y", 2), ("b", "z", 3),  # 3 interactions: test only
            ("c", "x", 1), ("c", "y", 2)]  # 2 interactions: training only
    data = _data(tmp_path, rows)
    split = make_split(data)
    tok = data.item_tokens
    ua, ub, uc = (list(data.user_tokens).index(u) for u in "abc")
    assert [tok[i] for i in split.sequences[ua]] == ["y", "z", "x", "w", "v"]
    assert split.train_len[ua] == 3 and split.train_len[ub] == 2 and split.train_len[uc] == 2
    assert dict(zip(split.test.user.tolist(), split.test.pos.tolist())) == {ua: 4, ub: 2}
    assert dict(zip(split.valid.user.tolist(), split.valid.pos.tolist())) == {ua: 3}


def test_ties_keep_file_order_and_checksum_is_deterministic(tiny_dataset):
    a = make_split(load_dataset(tiny_dataset))
    b = make_split(load_dataset(tiny_dataset))
    assert a.checksum == b.checksum
    assert make_split(load_dataset(tiny_dataset), "temporal").checksum != a.checksum


def test_no_leak_in_leave_one_out(tiny_dataset):
    data = load_dataset(tiny_dataset)
    split = make_split(data)
    for cases in (split.valid, split.test):
        for u, p in zip(cases.user, cases.pos):
            assert p >= split.train_len[u]  # targets are never training items
            t = split.times[u]
            assert (t[:p] <= t[p]).all()  # history never comes from the future


def test_temporal_split_respects_global_cutoffs(tiny_dataset):
    data = load_dataset(tiny_dataset)
    split = make_split(data, "temporal", valid_frac=0.2, test_frac=0.2)
    t_valid, t_test = split.cutoffs
    assert (t_valid, t_test) == pytest.approx(tuple(np.quantile(data.timestamp, [0.6, 0.8])))
    for u in range(1, data.n_users):
        assert (split.times[u][:split.train_len[u]] < t_valid).all()
    for u, p in zip(split.test.user, split.test.pos):
        assert split.times[u][p] >= t_test and (split.times[u][:p] < t_test).all()
    for u, p in zip(split.valid.user, split.valid.pos):
        assert t_valid <= split.times[u][p] < t_test
    assert len(split.test) > 0 and len(split.valid) > 0


@pytest.mark.parametrize("kwargs", [{"kind": "random"},
                                    {"kind": "temporal", "valid_frac": 0.6, "test_frac": 0.5}])
def test_bad_split_settings(tiny_dataset, kwargs):
    with pytest.raises(ConfigError):
        make_split(load_dataset(tiny_dataset), **kwargs)
