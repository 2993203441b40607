"""Import raw Amazon review data: the 2014, 2018 and 2023 releases (McAuley lab).

Layouts understood (JSON lines, optionally ``.gz``; 2014 files may hold Python dict literals):

* reviews 2014/2018: ``reviewerID``, ``asin``, ``unixReviewTime`` (s), ``overall``
* reviews 2023: ``user_id``, ``parent_asin``, ``timestamp`` (ms), ``rating``
* meta 2014: ``asin``, ``title``, ``brand``, ``categories`` (list of lists), ``description``,
  ``imUrl``; 2018: ``category`` (list), ``description`` (list), ``imageURLHighRes`` / ``image``;
  2023: ``parent_asin``, ``title``, ``store``, ``categories``, ``description`` (list),
  ``images`` (list of dicts with ``large`` / ``hi_res`` / ``thumb``)
"""

from __future__ import annotations

import ast
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

from ...errors import DataError
from ..dataset import write_dataset
from .common import (
    InteractionLog,
    attach_images,
    build_text,
    k_core_filter,
    open_lines,
    prepare_root,
    sort_by_user_time,
    to_float,
)
from .download import download_images

USER_KEYS = ("reviewerID", "user_id")
ITEM_KEYS = ("parent_asin", "asin")
IMAGE_KEYS = ("images", "imageURLHighRes", "imageURLHigh", "imageURL", "image", "imUrl")
IMAGE_SIZES = ("large", "hi_res", "thumb")  # 2023 image dicts, preferred size first
_TAG = re.compile(r"<[^>]*>")


def import_amazon_raw(reviews: Path, meta: Path, root: Path, name: str, k_core: int = 5,
                      images: bool = True, workers: int = 8, cache_dir: Path | None = None,
                      timeout: float = 10, retries: int = 3) -> Path:
    """Reviews + metadata -> a ``k_core``-filtered dataset, each user's reviews in time order.

    With ``images`` the first product image of every kept item is downloaded (``workers``
    threads, ``timeout`` seconds per request, ``retries`` retries with backoff) into
    ``cache_dir`` (default ``<root>/.image-cache``), so a rerun downloads nothing twice.
    Items without a usable image are counted in the manifest, never an error.
    """
    reviews, meta, root = Path(reviews), Path(meta), Path(root)
    prepare_root(root, name, sources=[reviews.parent, meta.parent, cache_dir])
    log = InteractionLog(extra=("rating",))
    for lineno, rec in read_records(reviews):
        user, item = _field(rec, USER_KEYS), _field(rec, ITEM_KEYS)
        if not user or not item:
            what = "user id (reviewerID / user_id)" if not user else "item id (parent_asin / asin)"
            raise DataError(f"{reviews}:{lineno}: no {what}")
        if "unixReviewTime" in rec:
            when = to_float(rec["unixReviewTime"], reviews, lineno, "unixReviewTime")
        elif "timestamp" in rec:  # 2023: milliseconds
            when = to_float(rec["timestamp"], reviews, lineno, "timestamp") / 1000
        else:
            raise DataError(f"{reviews}:{lineno}: no time (unixReviewTime / timestamp)")
        rating = rec.get("overall", rec.get("rating"))
        log.add(user, item, when,
                None if rating is None else to_float(rating, reviews, lineno, "rating"))
    if not len(log):
        raise DataError(f"{reviews}: no reviews")
    raw = log.build()
    inter = sort_by_user_time(k_core_filter(raw, k_core))
    if not len(inter):
        raise DataError(f"{reviews}: no interactions left after {k_core}-core filtering "
                        f"({len(raw)} reviews)")
    kept = inter.item_tokens()

    described: dict[str, tuple[str, str, str | None]] = {}
    wanted = set(kept)
    for lineno, rec in read_records(meta):
        item = _field(rec, ITEM_KEYS)
        if not item:
            raise DataError(f"{meta}:{lineno}: no item id (parent_asin / asin)")
        if item in wanted and item not in described:
            described[item] = _describe(rec)
    rows = [[i, described[i][0], described[i][1], None, described[i][2]]
            for i in kept if i in described]

    source: dict = {"importer": "amazon_raw", "reviews": str(reviews.resolve()),
                    "meta": str(meta.resolve()), "k_core": k_core, "reviews_read": len(raw),
                    "items_without_meta": len(kept) - len(rows)}
    fetched: dict[str, Path] = {}
    if images:
        cache = Path(cache_dir) if cache_dir is not None else root / ".image-cache"
        fetched, source["download"] = download_images(
            {row[0]: row[4] for row in rows}, cache, workers=workers, timeout=timeout,
            retries=retries)
    source["images"] = attach_images(rows, fetched, root, link=True)
    return write_dataset(root, name, inter.rows(), rows, inter_extra=[("rating", "float")],
                         item_extra=[("image_url", "token")], source=source)


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` of a JSON-lines file; lines that are not JSON are read as
    Python dict literals (the 2014 "loose JSON" files) with ``ast.literal_eval``, never eval."""
    for lineno, line in enumerate(open_lines(path), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            try:
                rec = ast.literal_eval(line)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise DataError(f"{path}:{lineno}: not a JSON object "
                                f"(nor a Python dict literal): {line[:60]!r}") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected an object, found {type(rec).__name__}")
        yield lineno, rec


def _field(rec: dict, keys: tuple[str, ...]) -> str:
    """The first of ``keys`` present with a non-empty value, as a string ('' if none)."""
    for key in keys:
        value = rec.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return ""


def _plain(value: object) -> str:
    """Text without HTML tags and entities (Amazon metadata holds both)."""
    return " ".join(html.unescape(_TAG.sub(" ", str(value))).split())


def _strings(value: object) -> list[str]:
    """A string, or the strings of a (nested) list, as plain text."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [_plain(value)]


def _describe(rec: dict) -> tuple[str, str, str | None]:
    """``(title, text, image URL)`` of a metadata record of any layout."""
    title = _plain(rec.get("title") or "")
    brand = _plain(rec.get("brand") or rec.get("store") or "")
    categories = _strings(rec.get("main_category")) + _strings(rec.get("categories",
                                                                        rec.get("category")))
    description = _strings(rec.get("description")) + _strings(rec.get("features",
                                                                        rec.get("feature")))
    text = build_text(title, [("Brand", brand), ("Categories", categories)], description)
    return title, text, _image_url(rec)


def _image_url(rec: dict) -> str | None:
    """The main product image: the first usable URL of the image fields (2023 dicts: the
    ``MAIN`` variant first, ``large`` size first)."""
    for key in IMAGE_KEYS:
        value = rec.get(key)
        candidates = value if isinstance(value, list) else [value]
        if key == "images":
            candidates = sorted((c for c in candidates if isinstance(c, dict)),
                                key=lambda c: c.get("variant") != "MAIN")
            candidates = [next((c[s] for s in IMAGE_SIZES if c.get(s)), None)
                          for c in candidates]
        for url in candidates:
            if isinstance(url, str) and url.strip().startswith(("http://", "https://")):
                return url.strip()
    return None
