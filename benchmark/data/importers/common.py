"""Building blocks shared by every importer: reading input files, item text, interactions,
k-core filtering and placing images into a dataset folder.

One helper per idea, so that all importers read, filter and describe data the same way.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import re
import shutil
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
IMAGES_DIR = "images"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_PIL_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


# --- reading input files -------------------------------------------------------------------------

def open_lines(path: Path) -> Iterator[str]:
    """Lines of a text file (gzip-compressed when the name ends in ``.gz``), decoded strictly as
    UTF-8; a bad byte or a corrupt archive is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 "
                                    f"(byte {raw[e.start]:#x} at column {e.start + 1})") from None
                yield line.removeprefix("\ufeff") if lineno == 1 else line
    except (OSError, EOFError) as e:  # corrupt or truncated gzip, unreadable file
        raise DataError(f"{path}:{lineno + 1}: cannot read ({e})") from None


Rows = Iterator[tuple[int, list[str]]]  # (line number, cells)


def read_table(path: Path, delimiter: str,
               quoting: int = csv.QUOTE_MINIMAL) -> tuple[list[str], Rows]:
    """Header and ``(line number, cells)`` rows of a delimited file with a header line.

    Blank lines are skipped; a row with the wrong number of cells is a DataError.
    """
    reader = csv.reader(open_lines(path), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file (no header line)") from None
    except csv.Error as e:
        raise DataError(f"{path}:1: {e}") from None

    def rows() -> Rows:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{path}:{reader.line_num}: {e}") from None
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: expected {len(header)} fields "
                                f"({delimiter!r}-separated, as in the header), found {len(row)}")
            yield reader.line_num, row

    return header, rows()


def column_key(name: str) -> str:
    """Normalised column name: RecBole ``:type`` suffix dropped, lower case (``movieId`` ->
    ``movieid``, ``item_id:token`` -> ``item_id``)."""
    return name.rsplit(":", 1)[0].strip().lower().replace(" ", "_")


def find_column(header: Sequence[str], aliases: Sequence[str], path: Path,
                what: str | None = None) -> int | None:
    """Index of the first header column matching one of ``aliases`` (in alias order).

    With ``what`` set the column is required and its absence is a DataError.
    """
    keys = [column_key(h) for h in header]
    for alias in aliases:
        if alias in keys:
            return keys.index(alias)
    if what is not None:
        raise DataError(f"{path}: no {what} column (expected one of: {', '.join(aliases)}; "
                        f"header has: {', '.join(header)})")
    return None


def to_float(value: str, path: Path, lineno: int, what: str) -> float:
    """``float(value)`` or a DataError naming the file, line and field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}:{lineno}: {what} is not a number: {str(value)[:40]!r}") from None
    if not np.isfinite(number):
        raise DataError(f"{path}:{lineno}: {what} is not a finite number: {value!r}")
    return number


# --- item text -----------------------------------------------------------------------------------

def unique(values: Iterable[str]) -> list[str]:
    """Stripped, non-empty values without repeats (case-insensitive), first spelling kept."""
    seen: set[str] = set()
    out = []
    for v in values:
        v = " ".join(str(v).split())
        if v and v.casefold() not in seen:
            seen.add(v.casefold())
            out.append(v)
    return out


def build_text(title: str, attributes: Iterable[tuple[str, str | Sequence[str] | None]] = (),
               description: str | Sequence[str] = "") -> str:
    """The full item text for encoders: ``"Title. Brand: X. Categories: a, b. Description"``.

    ``attributes`` are ``(label, value or list of values)``; empty parts are left out.
    """
    parts = [" ".join(title.split())]
    for label, value in attributes:
        values = unique([value] if isinstance(value, str) else (value or []))
        if values:
            parts.append(f"{label}: {', '.join(values)}")
    parts.extend(unique([description] if isinstance(description, str) else description))
    text = ""
    for part in filter(None, parts):
        if text:
            text += " " if text[-1] in ".!?" else ". "
        text += part
    return text


# --- interactions --------------------------------------------------------------------------------

@dataclass
class Interactions:
    """Interactions as token codes plus numeric columns (compact enough for millions of rows)."""

    users: list[str]  # token of each user code
    items: list[str]  # token of each item code
    user: np.ndarray  # int64 code per interaction
    item: np.ndarray
    time: np.ndarray  # float64
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # float64, NaN = empty

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> Interactions:
        return Interactions(self.users, self.items, self.user[index], self.item[index],
                            self.time[index], {k: v[index] for k, v in self.extra.items()})

    def item_tokens(self) -> list[str]:
        """Item tokens in order of first appearance."""
        _, first = np.unique(self.item, return_index=True)
        return [self.items[c] for c in self.item[np.sort(first)]]

    def rows(self) -> Iterator[tuple]:
        """``(user, item, timestamp, *extra)`` rows for ``write_dataset`` (NaN -> empty)."""
        columns = [self.user.tolist(), self.item.tolist(), self.time.tolist(),
                   *(x.tolist() for x in self.extra.values())]
        for u, i, t, *extra in zip(*columns):
            yield (self.users[u], self.items[i], t,
                   *(None if math.isnan(v) else v for v in extra))


class InteractionLog:
    """Collects interactions one at a time; codes follow first appearance of each token."""

    def __init__(self, extra: Sequence[str] = ()):
        self._user_code: dict[str, int] = {}
        self._item_code: dict[str, int] = {}
        self._user, self._item, self._time = array("q"), array("q"), array("d")
        self._extra = {name: array("d") for name in extra}

    def add(self, user: str, item: str, time: float, *extra: float | None) -> None:
        self._user.append(self._user_code.setdefault(user, len(self._user_code)))
        self._item.append(self._item_code.setdefault(item, len(self._item_code)))
        self._time.append(time)
        for column, value in zip(self._extra.values(), extra, strict=True):
            column.append(np.nan if value is None else value)

    def __len__(self) -> int:
        return len(self._user)

    def build(self) -> Interactions:
        return Interactions(list(self._user_code), list(self._item_code),
                            np.frombuffer(self._user, dtype=np.int64),
                            np.frombuffer(self._item, dtype=np.int64),
                            np.frombuffer(self._time, dtype=np.float64),
                            {k: np.frombuffer(v, dtype=np.float64) for k, v in self._extra.items()})


def k_core_filter(inter: Interactions, k: int) -> Interactions:
    """Iteratively drop interactions of users and items with fewer than ``k`` interactions,
    until every remaining user and item has at least ``k``. Row order is kept."""
    keep = np.ones(len(inter), dtype=bool)
    if k <= 1:
        return inter
    while True:
        users = np.bincount(inter.user[keep], minlength=len(inter.users))
        items = np.bincount(inter.item[keep], minlength=len(inter.items))
        drop = keep & ((users[inter.user] < k) | (items[inter.item] < k))
        if not drop.any():
            return inter.take(np.flatnonzero(keep))
        keep &= ~drop


def sort_by_user_time(inter: Interactions) -> Interactions:
    """Group rows by user (in order of first appearance) and sort each user's rows by time;
    ties keep file order (the sort is stable)."""
    return inter.take(np.lexsort((inter.time, inter.user)))


# --- dataset folder and images -------------------------------------------------------------------

def prepare_root(root: Path, name: str, sources: Iterable[Path | None] = ()) -> Path:
    """Check that ``root`` can receive dataset ``name`` (new, empty, or an older import of the
    same dataset) without touching the input: ``sources`` (input folders, image folders) must
    be neither ``root`` itself nor inside ``root/images``, which the importer rewrites."""
    root = Path(root)
    if not name or not _SAFE_NAME.fullmatch(name):
        raise DataError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-'")
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder")
    out, images = root.resolve(), (root / IMAGES_DIR).resolve()
    for src in sources:
        if src is None:
            continue
        src = Path(src).resolve()
        if src == out or src.is_relative_to(images):
            raise DataError(f"{root}: the output folder must differ from the input folder "
                            f"{src} (and must not contain it in images/)")
    others = [p.name for p in root.glob("*.inter") if p.stem != name] if root.is_dir() else []
    if others:
        raise DataError(f"{root}: already holds another dataset ({', '.join(others)}); "
                        f"import into an empty folder")
    root.mkdir(parents=True, exist_ok=True)
    return root


def image_index(folder: Path) -> dict[str, Path]:
    """Image files of a folder by file stem (``12.jpg`` -> ``"12"``), preferring the
    extension order of ``IMAGE_SUFFIXES`` when a stem has several."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: _suffix_rank(p.suffix)):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.setdefault(p.stem, p)
    return found


def _suffix_rank(suffix: str) -> int:
    s = suffix.lower()
    return IMAGE_SUFFIXES.index(s) if s in IMAGE_SUFFIXES else len(IMAGE_SUFFIXES)


def image_suffix(path: Path) -> str:
    """File extension for an image: its own, or the one of its format when it has none."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path.suffix.lower()
    from PIL import Image

    try:
        with Image.open(path) as img:
            return _PIL_SUFFIX.get(img.format or "", f".{(img.format or 'img').lower()}")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # unreadable: keep it under a neutral name, the manifest reports it as a bad image
        return ".img"


def place_images(sources: Mapping[str, Path], root: Path, link: bool = False) -> dict[str, str]:
    """Put each item's image into ``<root>/images/`` and return item -> path relative to root.

    With ``link`` the file is hard-linked when possible (for files the importer owns, e.g. its
    download cache) instead of copied. Files of an earlier import that are no longer used are
    removed from ``images/``.
    """
    folder = Path(root) / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    placed: dict[str, str] = {}
    taken: set[str] = set()  # case-folded: distinct on case-insensitive file systems too
    for token, src in sources.items():
        dst = folder / _image_name(token, image_suffix(src), taken)
        if dst.exists() and dst.samefile(src):
            placed[token] = f"{IMAGES_DIR}/{dst.name}"
            continue
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        if not (link and _try_link(src, dst)):
            shutil.copyfile(src, dst)
        placed[token] = f"{IMAGES_DIR}/{dst.name}"
    used = {Path(rel).name for rel in placed.values()}
    for old in folder.iterdir():
        if old.name not in used and old.is_file():
            old.unlink()
    return placed


def _image_name(token: str, suffix: str, taken: set[str]) -> str:
    """File name for an item's image: the token itself when it is a safe, still unused name,
    else the token's hash."""
    name = f"{token}{suffix}"
    if not _SAFE_NAME.fullmatch(token) or name.casefold() in taken:
        name = f"{hashlib.sha1(token.encode()).hexdigest()[:20]}{suffix}"
    taken.add(name.casefold())
    return name


def _try_link(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True


# --- item tables (item TSV files, RecBole .item files) -------------------------------------------

USER_COLUMNS = ("user_id", "user", "uid", "userid", "reviewerid")
ITEM_COLUMNS = ("item_id", "item", "iid", "itemid", "movieid", "movie_id", "parent_asin", "asin",
                "id")
TIME_COLUMNS = ("timestamp", "time", "ts", "unixreviewtime")
TITLE_COLUMNS = ("title", "movie_title", "product_title", "book_title", "item_name", "name")
DESCRIPTION_COLUMNS = ("description", "desc", "text", "overview", "summary", "plot")
IMAGE_COLUMNS = ("image", "image_path", "img", "poster", "cover", "picture")
LIST_COLUMNS = frozenset({"categories", "category", "genres", "genre", "class", "attributes",
                          "attribute", "attrs", "tags", "tag", "keywords", "features"})
LABELS = {"brand": "Brand", "store": "Brand", "manufacturer": "Brand", "categories": "Categories",
          "category": "Categories", "class": "Genres", "genre": "Genres", "genres": "Genres",
          "release_year": "Year", "year": "Year", "attrs": "Attributes", "tag": "Tags"}
RESERVED_ITEM_FIELDS = frozenset({"item_id", "title", "text", "image"})


def label(key: str) -> str:
    """Human label of a column for the item text (``release_year`` -> ``Year``)."""
    return LABELS.get(key, key.replace("_", " ").capitalize())


def _id_like(name: str) -> bool:
    """An identifier or address column (``sku_id``, ``movieId``, ``asin``, ``image_url``):
    no use in the item text."""
    name = name.rsplit(":", 1)[0].strip()
    key = name.lower()
    return (key in ("id", "asin", "parent_asin") or key.endswith("_id")
            or name.endswith(("Id", "ID")) or "url" in key)


@dataclass
class ItemTable:
    """Item rows ``[item, title, text, image (None until attached), *extras]`` read from a
    table, the raw image cell of each item, and the extra fields kept."""

    rows: list[list]
    image_values: dict[str, str]
    extra_fields: list[tuple[str, str]]
    dropped: int = 0  # rows skipped because the item has no interaction


def collect_items(path: Path, header: Sequence[str], rows: Iterable[tuple[int, Sequence]],
                  types: Sequence[str] | None = None, list_sep: str = "|",
                  keep: set[str] | None = None) -> ItemTable:
    """Map the columns of an item table to title / text / image / extras and read its rows.

    ``types`` are RecBole field types (None: a plain TSV, every column is text). Title, image
    and description columns are found by name; every other text column that is not an id
    becomes a labelled attribute of the text (list columns split on ``list_sep``; in a RecBole
    file only ``token_seq`` columns are lists, split on spaces) and is kept as an extra field.
    ``keep``: only items in this set are kept.
    """
    keys = [column_key(h) for h in header]
    plain = types is None
    types = ["token"] * len(keys) if types is None else list(types)
    item = find_column(header, ITEM_COLUMNS, path, "item id")
    if types[item] != "token":
        raise DataError(f"{path}: item id column {header[item]!r} must be of type token")
    texty = [t in ("token", "token_seq") for t in types]
    title = find_column(header, TITLE_COLUMNS, path)
    if title is None:
        title = next((i for i, k in enumerate(keys) if k.endswith("title") and texty[i]), None)
    image = find_column(header, IMAGE_COLUMNS, path)
    used = {item, title, image}
    description = [i for i, k in enumerate(keys)
                   if k in DESCRIPTION_COLUMNS and texty[i] and i not in used]
    attributes = [i for i, k in enumerate(keys)
                  if texty[i] and not _id_like(header[i]) and i not in used
                  and i not in description]
    extras = [i for i, k in enumerate(keys) if i not in used and i not in description
              and k not in RESERVED_ITEM_FIELDS and k not in keys[:i]]  # first of equal names
    seps = {i: list_sep if plain else " " for i in attributes
            if keys[i] in LIST_COLUMNS and (plain or types[i] == "token_seq")}

    table = ItemTable([], {}, [(keys[i], types[i]) for i in extras])
    first_line: dict[str, int] = {}
    for lineno, cells in rows:
        token = str(cells[item]).strip()
        if not token:
            raise DataError(f"{path}:{lineno}: empty item id")
        check_new(first_line, token, path, lineno, "item")
        if keep is not None and token not in keep:
            table.dropped += 1
            continue
        title_text = str(cells[title]) if title is not None else ""
        attrs = [(label(keys[i]), _split(cells[i], seps.get(i))) for i in attributes]
        text = build_text(title_text, attrs, [str(cells[i]) for i in description])
        table.rows.append([token, title_text, text, None, *(cells[i] for i in extras)])
        if image is not None and str(cells[image]).strip():
            table.image_values[token] = str(cells[image]).strip()
    return table


def _split(value: object, sep: str | None) -> list[str]:
    value = "" if value is None else str(value)
    return value.split(sep) if sep else [value]


def check_new(first_line: dict[str, int], token: str, path: Path, lineno: int, what: str) -> None:
    """Remember where ``token`` first appeared; a second appearance is a DataError."""
    if token in first_line:
        raise DataError(f"{path}:{lineno}: {what} {token!r} appears again "
                        f"(first on line {first_line[token]})")
    first_line[token] = lineno


def find_local_images(values: Mapping[str, str], bases: Sequence[Path],
                      folder: Path | None = None, tokens: Iterable[str] = ()) -> dict[str, Path]:
    """Image file of each item: its table cell as a path (absolute, or relative to one of
    ``bases`` or ``folder``), else ``<folder>/<item>.<image extension>``. Items without an
    existing file are left out (counted as missing images, never an error)."""
    by_stem = image_index(folder) if folder is not None else {}
    roots = [*bases, *([folder] if folder is not None else [])]
    found: dict[str, Path] = {}
    for token in dict.fromkeys([*values, *tokens]):
        value = values.get(token, "")
        candidates = [Path(value)] if value and Path(value).is_absolute() else \
            [Path(base) / value for base in roots] if value else []
        path = next((p for p in candidates if p.is_file()), None) or by_stem.get(token)
        if path is not None:
            found[token] = path
    return found


def attach_images(rows: list[list], sources: Mapping[str, Path], root: Path,
                  link: bool = False) -> dict:
    """Place the images of item rows into the dataset folder and fill each row's image cell;
    returns the counts recorded in the manifest source."""
    placed = place_images({row[0]: sources[row[0]] for row in rows if row[0] in sources},
                          root, link=link)
    for row in rows:
        row[3] = placed.get(row[0])
    return {"items": len(rows), "with_image": len(placed), "without_image": len(rows) - len(placed)}
