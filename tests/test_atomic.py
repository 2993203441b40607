"""Atomic files and dataset folders: strict reading, clear errors, counted image problems."""

from __future__ import annotations

import pytest
from PIL import Image

from benchmark.data.atomic import clean_text, read_atomic, write_atomic
from benchmark.data.dataset import load_dataset, write_dataset
from benchmark.errors import DataError


def test_round_trip_and_text_cleaning(tmp_path):
    path = write_atomic(tmp_path / "x.item", [("item_id", "token"), ("title", "token_seq"),
                                              ("price", "float")],
                        [("a", 'The "Best"\tthing\never', 1.5), ("b", "", None)])
    t = read_atomic(path, required=["item_id"])
    assert t.columns["title"] == ["The \u201dBest\u201d thing ever", ""]
    assert t.columns["price"] == [1.5, None]
    assert clean_text("  a \t b\r\nc ") == "a b c"


@pytest.mark.parametrize("content, message", [
    (b"user_id:token\titem_id:tok\n1\t2\n", "unknown type 'tok'"),
    (b"user_id\titem_id:token\n1\t2\n", "is not 'name:type'"),
    (b"user_id:token\titem_id:token\n1\t2\t3\n", "x.inter:2: expected 2 tab-separated fields"),
    (b"user_id:token\ttimestamp:float\n1\tyesterday\n", "x.inter:2: field 'timestamp' is not a number"),
    (b"user_id:token\titem_id:token\n1\t\xff\xfe\n", "x.inter:2: not valid UTF-8"),
    (b"", "empty file"),
    (b"user_id:token\tuser_id:token\n", "duplicate field"),
])
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "x.inter").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_atomic(tmp_path / "x.inter")


def test_missing_required_column(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "d.inter").write_text("user_id:token\ttimestamp:float\n1\t2\n")
    with pytest.raises(DataError, match="missing required column.*item_id"):
        load_dataset(tmp_path / "d")


def test_empty_interactions(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "d.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(DataError, match="no interactions"):
        load_dataset(tmp_path / "d")


def test_corrupt_and_missing_images_are_counted_not_fatal(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "images" / "a.jpg")
    good = (root / "images" / "a.jpg").read_bytes()
    (root / "images" / "b.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (root / "images" / "c.jpg").write_bytes(b"not an image")
    rows = [("u1", i, t) for t, i in enumerate("abcde")]
    items = [("a", "A", "", "images/a.jpg"), ("b", "B", "", "images/b.jpg"),
             ("c", "C", "", "images/c.jpg"), ("d", "D", "", "images/missing.jpg"),
             ("e", "", "", None)]
    write_dataset(root, "d", rows, items)
    data = load_dataset(root)
    cov = data.manifest["coverage"]
    assert cov["items_with_readable_image"] == 1
    assert cov["items_with_text"] == 4
    assert cov["image_problems"]["missing"] == 1
    assert sum(v for k, v in cov["image_problems"].items() if k.startswith("unreadable")) == 2
    assert any("treated as a missing image" in f for f in data.manifest["findings"])


def test_ids_follow_first_appearance_like_recbole(tmp_path):
    rows = [("u2", "b", 1), ("u1", "a", 2), ("u2", "c", 3)]
    data = load_dataset(write_dataset(tmp_path / "d", "d", rows,
                                      [("z", "only in item file", "", None), ("a", "A", "", None)]))
    assert list(data.user_tokens) == ["[PAD]", "u2", "u1"]
    assert list(data.item_tokens) == ["[PAD]", "b", "a", "c", "z"]
    assert data.item_text(4) == "only in item file" and data.n_items == 5
