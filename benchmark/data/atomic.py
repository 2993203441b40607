"""RecBole atomic files (``.inter``, ``.item``): one strict reader and one writer.

Format (RecBole's): tab-separated, a header of ``name:type`` fields with type one of
``token``, ``token_seq``, ``float``, ``float_seq``; sequence values separated by single spaces.
The reader checks everything a user can get wrong and names the file and line in the error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..io import atomic_write

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass
class AtomicTable:
    """Columns of one atomic file, all as Python lists of strings or floats (``None`` = empty)."""

    fields: list[str]
    types: dict[str, str]
    columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def header(self) -> list[str]:
        return [f"{name}:{self.types[name]}" for name in self.fields]


def clean_text(value: str) -> str:
    """Make free text safe for a tab-separated atomic file that RecBole (pandas) also reads.

    Tabs and newlines would split fields or rows; a double quote would start a quoted field in
    pandas' parser and swallow the following lines, so it becomes a typographic quote.
    """
    value = " ".join(value.replace("\t", " ").replace("\r", " ").replace("\n", " ").split())
    return value.replace('"', "\u201d")


def write_atomic(path: str | Path, fields: Sequence[tuple[str, str]], rows: Iterable[Sequence]) -> Path:
    """Write an atomic file atomically. ``fields`` is ``[(name, type), ...]``; ``None`` -> empty."""
    for name, ftype in fields:
        if ftype not in FIELD_TYPES:
            raise ValueError(f"field {name!r}: unknown atomic type {ftype!r}")

    def render(value, ftype: str) -> str:
        if value is None:
            return ""
        if ftype == "float":
            return repr(float(value)) if not float(value).is_integer() else str(int(value))
        if ftype in ("token_seq", "float_seq") and not isinstance(value, str):
            return " ".join(clean_text(str(v)) for v in value)
        return clean_text(str(value))

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(f"{n}:{t}" for n, t in fields) + "\n")
            f.writelines("\t".join(render(v, t) for v, (_, t) in zip(row, fields, strict=True)) + "\n" for row in rows)

    return atomic_write(path, write)


def read_atomic(path: str | Path, required: Sequence[str] = ()) -> AtomicTable:
    """Read an atomic file strictly: UTF-8, known types, consistent column counts, numbers parse."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {e.object[e.start]:#x})") from None
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (no header)") from None
    fields, types = [], {}
    for cell in header:
        name, sep, ftype = cell.strip().rpartition(":")
        if not sep or not name:
            raise DataError(f"{path}:1: header field {cell!r} is not 'name:type'")
        if ftype not in FIELD_TYPES:
            raise DataError(f"{path}:1: field {name!r} has unknown type {ftype!r} "
                            f"(expected one of {', '.join(FIELD_TYPES)})")
        if name in types:
            raise DataError(f"{path}:1: duplicate field {name!r}")
        fields.append(name)
        types[name] = ftype
    missing = [r for r in required if r not in types]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)} "
                        f"(header has {', '.join(fields)})")
    columns: dict[str, list] = {name: [] for name in fields}
    for lineno, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(fields):
            raise DataError(f"{path}:{lineno}: expected {len(fields)} tab-separated fields, "
                            f"found {len(row)}")
        for name, value in zip(fields, row):
            ftype = types[name]
            if ftype == "float":
                if value.strip() == "":
                    columns[name].append(None)
                    continue
                try:
                    columns[name].append(float(value))
                except ValueError:
                    raise DataError(f"{path}:{lineno}: field {name!r} is not a number: "
                                    f"{value[:40]!r}") from None
            else:
                columns[name].append(value)
    return AtomicTable(fields=fields, types=types, columns=columns)
