"""Import a folder of RecBole atomic files (any RecBole naming), and MovieLens-100K from the
copy that ships inside the ``recbole`` wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from ...errors import DataError
from ..atomic import read_atomic
from ..dataset import find_name, write_dataset
from .common import (
    ITEM_COLUMNS,
    TIME_COLUMNS,
    USER_COLUMNS,
    attach_images,
    collect_items,
    find_column,
    find_local_images,
    prepare_root,
)


def import_atomic_folder(src: Path, root: Path, name: str | None = None,
                         images: Path | None = None) -> Path:
    """Convert ``<src>/<stem>.inter`` (+ ``<stem>.item``) into a dataset folder.

    Id columns are found by name (``user_id``/``uid``/..., ``item_id``/``iid``/...,
    ``timestamp``/``time``; RecBole ``name:type`` headers), the title-like column becomes the
    title, the other text columns build the item text and stay as extra fields. Images come from
    an ``image`` column (paths relative to ``src`` or ``images``) or ``<images>/<item>.jpg|png``.
    Without a timestamp column the file order is the time order.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: folder not found")
    return _convert(src, Path(root), name, images, {"importer": "atomic_folder",
                                                     "from": str(src.resolve())})


def import_ml100k(root: Path, images: Path | None = None) -> Path:
    """MovieLens-100K from the recbole wheel; ``images``: a folder of ``<item_id>.jpg`` posters.

    Interactions keep the file order of ``ml-100k.inter`` (rating kept as an extra float
    field); the item text is title, year and genres. Items without a poster have no image.
    """
    src = ml100k_dir()
    version = importlib.metadata.version("recbole")
    return _convert(src, Path(root), "ml-100k", images,
                    {"importer": "ml100k", "from": f"recbole {version} dataset_example/ml-100k"})


def ml100k_dir() -> Path:
    """The ml-100k atomic files inside the installed recbole package (recbole is not imported:
    importing it takes seconds)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the recbole package is not installed (it ships the ml-100k files)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise DataError(f"{folder}: ml-100k.inter not found in the recbole package")
    return folder


def _convert(src: Path, root: Path, name: str | None, images: Path | None,
             source: dict) -> Path:
    stem = find_name(src)
    name = name or stem
    prepare_root(root, name, sources=[src, images])
    inter_path, item_path = src / f"{stem}.inter", src / f"{stem}.item"
    inter = read_atomic(inter_path)
    user = inter.fields[find_column(inter.fields, USER_COLUMNS, inter_path, "user id")]
    item = inter.fields[find_column(inter.fields, ITEM_COLUMNS, inter_path, "item id")]
    time_col = find_column(inter.fields, TIME_COLUMNS, inter_path)
    time = inter.fields[time_col] if time_col is not None else None
    for col in (user, item):
        if inter.types[col] != "token":
            raise DataError(f"{inter_path}: column {col!r} must be of type token, "
                            f"not {inter.types[col]}")
        empty = next((n for n, v in enumerate(inter.columns[col]) if not v.strip()), None)
        if empty is not None:
            raise DataError(f"{inter_path}:{empty + 2}: empty {col}")
    if len(inter) == 0:
        raise DataError(f"{inter_path}: no interactions")
    if time is not None:
        if inter.types[time] != "float":
            raise DataError(f"{inter_path}: timestamp column {time!r} must be of type float")
        missing = next((n for n, v in enumerate(inter.columns[time]) if v is None), None)
        if missing is not None:
            raise DataError(f"{inter_path}:{missing + 2}: empty {time}")
        times = inter.columns[time]
    else:
        times = [float(n) for n in range(len(inter))]
    extra = [f for f in inter.fields if f not in (user, item, time)]
    inter_rows = zip(inter.columns[user], inter.columns[item], times,
                     *(inter.columns[f] for f in extra))

    if item_path.is_file():
        table = read_atomic(item_path)
        cells = zip(*(table.columns[f] for f in table.fields))
        items = collect_items(item_path, table.fields, enumerate(cells, start=2),
                              types=[table.types[f] for f in table.fields])
    else:
        items = collect_items(item_path, ["item_id"], [])
    found = find_local_images(items.image_values, [src], images,
                              tokens=[row[0] for row in items.rows])
    source["images"] = attach_images(items.rows, found, root)
    if images is not None:
        source["image_folder"] = str(Path(images).resolve())
    return write_dataset(root, name, inter_rows, items.rows,
                         inter_extra=[(f, inter.types[f]) for f in extra],
                         item_extra=items.extra_fields, source=source)
