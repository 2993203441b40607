"""A dataset on disk: RecBole atomic files + an image folder + ``manifest.json``.

Layout of a dataset folder ``<root>``::

    <name>.inter   user_id:token  item_id:token  timestamp:float  [extra per-interaction fields]
    <name>.item    item_id:token  title:token_seq  text:token_seq  image:token  [extra item fields]
    images/        image files; ``image`` holds a path relative to <root> (empty = no image)
    manifest.json  content hash, counts, modality coverage, data-quality findings

Internal ids follow RecBole's remapping exactly (0 is padding; users and items are numbered by
first appearance in the ``.inter`` file, then items that only appear in the ``.item`` file), so
a harness model and a RecBole model built from the same files see the same id space.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_write_json, read_json, sha256_file
from .atomic import read_atomic, write_atomic

log = logging.getLogger(__name__)

USER, ITEM, TIME = "user_id", "item_id", "timestamp"
TEXT_FIELDS = ("title", "text")
IMAGE_FIELD = "image"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class Dataset:
    """Interactions and item content of one dataset, in RecBole's internal id space."""

    name: str
    root: Path
    user_tokens: np.ndarray  # object array, index 0 = "[PAD]"
    item_tokens: np.ndarray  # object array, index 0 = "[PAD]"
    user: np.ndarray  # int64 per interaction, file order
    item: np.ndarray  # int64 per interaction, file order
    timestamp: np.ndarray  # float64 per interaction
    inter_fields: dict[str, np.ndarray] = field(default_factory=dict)  # extra columns, file order
    item_fields: dict[str, list] = field(default_factory=dict)  # by internal item id (0 = pad)
    manifest: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        """Number of user ids including padding (RecBole's ``dataset.num(uid)``)."""
        return len(self.user_tokens)

    @property
    def n_items(self) -> int:
        """Number of item ids including padding (RecBole's ``dataset.num(iid)``)."""
        return len(self.item_tokens)

    @property
    def n_interactions(self) -> int:
        return len(self.user)

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def item_text(self, item: int) -> str:
        """The item's full text for text encoders ('' when it has none)."""
        for name in ("text", "title"):
            values = self.item_fields.get(name)
            if values is not None and values[item]:
                return values[item]
        return ""

    def image_path(self, item: int) -> Path | None:
        """Absolute path of the item's image, or None when the item has no image entry."""
        values = self.item_fields.get(IMAGE_FIELD)
        if values is None or not values[item]:
            return None
        p = Path(values[item])
        return p if p.is_absolute() else self.root / p

    def has_images(self) -> bool:
        return self.manifest.get("coverage", {}).get("items_with_readable_image", 0) > 0

    def has_text(self) -> bool:
        return self.manifest.get("coverage", {}).get("items_with_text", 0) > 0


def write_dataset(
    root: str | Path,
    name: str,
    interactions: Iterable[Sequence],
    items: Iterable[Sequence],
    inter_extra: Sequence[tuple[str, str]] = (),
    item_extra: Sequence[tuple[str, str]] = (),
    source: dict | None = None,
) -> Path:
    """Write a dataset folder and its manifest.

    ``interactions`` rows: ``(user, item, timestamp, *inter_extra values)``.
    ``items`` rows: ``(item, title, text, image_relpath_or_None, *item_extra values)``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / f"{name}.inter",
                 [(USER, "token"), (ITEM, "token"), (TIME, "float"), *inter_extra], interactions)
    write_atomic(root / f"{name}.item",
                 [(ITEM, "token"), ("title", "token_seq"), ("text", "token_seq"),
                  (IMAGE_FIELD, "token"), *item_extra], items)
    write_manifest(root, name, source=source or {})
    return root


def find_name(root: Path) -> str:
    inters = sorted(root.glob("*.inter"))
    if len(inters) != 1:
        raise DataError(f"{root}: expected exactly one .inter file, found {len(inters)}")
    return inters[0].stem


def _factorize(tokens: Sequence[str], first: Sequence[str] = ()) -> tuple[np.ndarray, dict]:
    """Ids by first appearance, 1-based, with [PAD] at 0 (RecBole's ``pd.factorize`` remap)."""
    token_id: dict[str, int] = {}
    for t in first:
        token_id.setdefault(t, len(token_id) + 1)
    ids = np.fromiter((token_id.setdefault(t, len(token_id) + 1) for t in tokens),
                      dtype=np.int64, count=len(tokens))
    return ids, token_id


def load_dataset(root: str | Path) -> Dataset:
    """Load a dataset folder (writing its manifest first if it has none)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    name = find_name(root)
    inter = read_atomic(root / f"{name}.inter", required=(USER, ITEM))
    if len(inter) == 0:
        raise DataError(f"{root / (name + '.inter')}: no interactions")
    for col in (USER, ITEM):
        empty = [i for i, v in enumerate(inter.columns[col]) if not v.strip()]
        if empty:
            raise DataError(f"{root / (name + '.inter')}:{empty[0] + 2}: empty {col}")
    if TIME in inter.columns:
        times = inter.columns[TIME]
        if any(t is None for t in times):
            line = next(i for i, t in enumerate(times) if t is None) + 2
            raise DataError(f"{root / (name + '.inter')}:{line}: empty timestamp")
        timestamp = np.asarray(times, dtype=np.float64)
    else:  # no timestamps: file order is the order of events
        timestamp = np.arange(len(inter), dtype=np.float64)

    item_path = root / f"{name}.item"
    item_table = read_atomic(item_path, required=(ITEM,)) if item_path.exists() else None
    user_ids, user_map = _factorize(inter.columns[USER])
    item_ids, item_map = _factorize(inter.columns[ITEM])
    if item_table is not None:
        for t in item_table.columns[ITEM]:
            item_map.setdefault(t, len(item_map) + 1)
    user_tokens = np.array(["[PAD]", *user_map.keys()], dtype=object)
    item_tokens = np.array(["[PAD]", *item_map.keys()], dtype=object)

    item_fields: dict[str, list] = {}
    if item_table is not None:
        seen = set()
        for row, t in enumerate(item_table.columns[ITEM]):
            if t in seen:
                raise DataError(f"{item_path}:{row + 2}: duplicate item_id {t!r}")
            seen.add(t)
        index = np.array([item_map[t] for t in item_table.columns[ITEM]], dtype=np.int64)
        for fname in item_table.fields:
            if fname == ITEM:
                continue
            values: list = [None if item_table.types[fname] == "float" else ""] * len(item_tokens)
            for i, v in zip(index, item_table.columns[fname]):
                values[i] = v
            item_fields[fname] = values

    inter_fields = {
        f: np.asarray(inter.columns[f], dtype=np.float64 if inter.types[f] == "float" else object)
        for f in inter.fields if f not in (USER, ITEM, TIME)
    }
    manifest_path = root / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.exists() else None
    if manifest is None or manifest.get("version") != MANIFEST_VERSION:
        manifest = write_manifest(root, name)
    return Dataset(name=name, root=root, user_tokens=user_tokens, item_tokens=item_tokens,
                   user=user_ids, item=item_ids, timestamp=timestamp, inter_fields=inter_fields,
                   item_fields=item_fields, manifest=manifest)


def check_image(path: Path) -> str | None:
    """None if the image decodes fully, else the reason it does not (missing, corrupt, ...)."""
    return open_image(path)[1]


def open_image(path: Path):
    """(the fully decoded PIL image, None), or (None, the reason it does not decode)."""
    from PIL import Image

    if not path.is_file():
        return None, "missing"
    try:
        with Image.open(path) as img:
            img.load()  # decodes every pixel: catches truncated files that verify() lets through
            return img.copy(), None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"unreadable ({type(e).__name__})"


def write_manifest(root: Path, name: str, source: dict | None = None) -> dict:
    """Inspect a dataset folder and write ``manifest.json``: hash, counts, coverage, findings."""
    inter = read_atomic(root / f"{name}.inter", required=(USER, ITEM))
    item_path = root / f"{name}.item"
    items = read_atomic(item_path, required=(ITEM,)) if item_path.exists() else None
    h = hashlib.sha256()
    h.update(sha256_file(root / f"{name}.inter").encode())
    findings: list[str] = []
    users, item_col = inter.columns[USER], inter.columns[ITEM]
    n_inter = len(inter)
    pairs = set(zip(users, item_col))
    if len(pairs) < n_inter:
        findings.append(f"{n_inter - len(pairs)} repeated (user, item) interactions")
    counts: dict[str, int] = {}
    for u in users:
        counts[u] = counts.get(u, 0) + 1
    short = sum(1 for c in counts.values() if c < 3)
    if short:
        findings.append(f"{short} users with fewer than 3 interactions (no validation case)")
    n_items = len(set(item_col))
    with_text = with_image = 0
    image_problems: dict[str, int] = {}
    if items is not None:
        h.update(sha256_file(item_path).encode())
        all_items = set(items.columns[ITEM]) | set(item_col)
        n_items = len(all_items)
        unseen = len(set(items.columns[ITEM]) - set(item_col))
        if unseen:
            findings.append(f"{unseen} items in the .item file never interacted with")
        no_row = len(set(item_col) - set(items.columns[ITEM]))
        if no_row:
            findings.append(f"{no_row} interacted items have no row in the .item file")
        texts = [items.columns.get(f) for f in TEXT_FIELDS if f in items.columns]
        for row in range(len(items)):
            if any(col[row].strip() for col in texts):
                with_text += 1
        if IMAGE_FIELD in items.columns:
            for rel in items.columns[IMAGE_FIELD]:
                if not rel:
                    image_problems["no image entry"] = image_problems.get("no image entry", 0) + 1
                    continue
                p = Path(rel) if Path(rel).is_absolute() else root / rel
                problem = check_image(p)
                if problem is None:
                    with_image += 1
                    h.update(rel.encode() + sha256_file(p).encode())
                else:
                    image_problems[problem] = image_problems.get(problem, 0) + 1
        for problem, n in sorted(image_problems.items()):
            if problem != "no image entry":
                findings.append(f"{n} images {problem}: treated as a missing image")
    manifest = {
        "version": MANIFEST_VERSION,
        "name": name,
        "content_hash": h.hexdigest()[:16],
        "counts": {"users": len(counts), "items": n_items, "interactions": n_inter},
        "coverage": {
            "items_with_text": with_text,
            "items_with_readable_image": with_image,
            "image_problems": image_problems,
        },
        "findings": findings,
        "source": source or {},
    }
    if source is None:
        old = root / MANIFEST
        if old.exists():
            try:
                manifest["source"] = read_json(old).get("source", {})
            except ValueError:
                pass
    atomic_write_json(root / MANIFEST, manifest)
    for finding in findings:
        log.info("%s: %s", name, finding)
    return manifest
