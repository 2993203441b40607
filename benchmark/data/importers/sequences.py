"""Import the common ``user item1 item2 ...`` sequence file (+ an optional item TSV)."""

from __future__ import annotations

import csv
from pathlib import Path

from ...errors import DataError
from ..dataset import write_dataset
from .common import (
    InteractionLog,
    attach_images,
    check_new,
    collect_items,
    find_local_images,
    open_lines,
    prepare_root,
    read_table,
)


def import_sequence_file(sequences: Path, items_tsv: Path | None, root: Path, name: str) -> Path:
    """One user per line, ``user item1 item2 ...`` in time order (spaces or tabs).

    There are no timestamps: each interaction's timestamp is its position in the user's
    sequence; users keep the file order. ``items_tsv``: a tab-separated item table with a
    header; ``item_id`` is required, title / description / brand / categories / attributes
    (``|``-separated lists) / image (path relative to the TSV) are optional, other columns are
    kept as extra fields. Only items that occur in a sequence are written.
    """
    sequences, root = Path(sequences), Path(root)
    items_tsv = Path(items_tsv) if items_tsv is not None else None
    prepare_root(root, name, sources=[sequences.parent, items_tsv and items_tsv.parent])
    log = InteractionLog()
    first_line: dict[str, int] = {}
    blank = None
    for lineno, line in enumerate(open_lines(sequences), start=1):
        tokens = line.split()
        if not tokens:
            blank = blank or lineno
            continue
        if blank is not None:
            raise DataError(f"{sequences}:{blank}: empty line "
                            f"(every line must be 'user item1 item2 ...')")
        user, items = tokens[0], tokens[1:]
        if not items:
            raise DataError(f"{sequences}:{lineno}: user {user!r} has no items "
                            f"(expected 'user item1 item2 ...')")
        check_new(first_line, user, sequences, lineno, "user")
        for position, item in enumerate(items):
            log.add(user, item, float(position))
    if not len(log):
        raise DataError(f"{sequences}: no sequences")
    inter = log.build()

    source: dict = {"importer": "sequence_file", "from": str(sequences.resolve()),
                    "timestamps": "position in the user's sequence"}
    rows: list[list] = []
    extra_fields: list[tuple[str, str]] = []
    if items_tsv is not None:
        header, table_rows = read_table(items_tsv, "\t", quoting=csv.QUOTE_NONE)
        table = collect_items(items_tsv, header, table_rows, keep=set(inter.items))
        rows, extra_fields = table.rows, table.extra_fields
        found = find_local_images(table.image_values, [items_tsv.parent])
        source.update(items=str(items_tsv.resolve()), items_without_interactions=table.dropped)
        source["images"] = attach_images(rows, found, root)
    else:
        attach_images(rows, {}, root)  # clears images of an earlier import into this folder
    return write_dataset(root, name, inter.rows(), rows, item_extra=extra_fields, source=source)
