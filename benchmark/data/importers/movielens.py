"""Import a MovieLens CSV release (ml-latest, ml-latest-small, ml-20m, ml-25m, ...)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..dataset import write_dataset
from .common import (
    InteractionLog,
    attach_images,
    build_text,
    check_new,
    find_column,
    find_local_images,
    prepare_root,
    read_table,
    sort_by_user_time,
    to_float,
    unique,
)

MAX_TAGS = 10  # most frequent tags of a movie that go into its text
NO_GENRES = "(no genres listed)"


def import_movielens_csv(folder: Path, root: Path, name: str, posters: Path | None = None) -> Path:
    """``ratings.csv`` (userId, movieId, rating, timestamp) + ``movies.csv`` (movieId, title,
    genres with ``|``) + optional ``tags.csv`` (userId, movieId, tag, timestamp).

    Each user's ratings are sorted by time (stable); the item text is title (with year),
    genres and the movie's most frequent tags. ``posters``: a folder of ``<movieId>.jpg|png``.
    Only rated movies are written.
    """
    folder, root = Path(folder), Path(root)
    prepare_root(root, name, sources=[folder, posters])
    ratings = folder / "ratings.csv"
    header, rows = read_table(ratings, ",")
    user = find_column(header, ("userid", "user_id"), ratings, "userId")
    item = find_column(header, ("movieid", "movie_id", "item_id"), ratings, "movieId")
    time = find_column(header, ("timestamp",), ratings, "timestamp")
    rating = find_column(header, ("rating",), ratings)
    log = InteractionLog(extra=("rating",) if rating is not None else ())
    for lineno, cells in rows:
        extra = [to_float(cells[rating], ratings, lineno, "rating")] if rating is not None else []
        log.add(cells[user].strip(), cells[item].strip(),
                to_float(cells[time], ratings, lineno, "timestamp"), *extra)
    inter = sort_by_user_time(log.build())
    rated = set(inter.items)

    tags = _read_tags(folder / "tags.csv", rated)
    movies = folder / "movies.csv"
    header, rows = read_table(movies, ",")
    item = find_column(header, ("movieid", "movie_id", "item_id"), movies, "movieId")
    title = find_column(header, ("title",), movies, "title")
    genres_col = find_column(header, ("genres",), movies)
    items: list[list] = []
    first_line: dict[str, int] = {}
    for lineno, cells in rows:
        token = cells[item].strip()
        check_new(first_line, token, movies, lineno, "movieId")
        if token not in rated:
            continue
        genres = [g for g in cells[genres_col].split("|") if g.strip() != NO_GENRES] \
            if genres_col is not None else []
        text = build_text(cells[title], [("Genres", genres), ("Tags", tags.get(token, []))])
        items.append([token, cells[title], text, None, unique(genres)])

    found = find_local_images({}, [], posters, tokens=[row[0] for row in items]) \
        if posters is not None else {}
    source = {"importer": "movielens_csv", "from": str(folder.resolve()),
              "items_without_interactions": len(first_line) - len(items),
              "images": attach_images(items, found, root)}
    if posters is not None:
        source["image_folder"] = str(Path(posters).resolve())
    return write_dataset(root, name, inter.rows(), items,
                         inter_extra=[("rating", "float")] if rating is not None else [],
                         item_extra=[("genres", "token_seq")], source=source)


def _read_tags(path: Path, movies: set[str]) -> dict[str, list[str]]:
    """The ``MAX_TAGS`` most frequent tags of each movie (ties: first use first)."""
    if not path.is_file():
        return {}
    header, rows = read_table(path, ",")
    item = find_column(header, ("movieid", "movie_id", "item_id"), path, "movieId")
    tag = find_column(header, ("tag",), path, "tag")
    counts: dict[str, Counter[str]] = {}
    spelling: dict[str, str] = {}
    for _, cells in rows:
        token, value = cells[item].strip(), " ".join(cells[tag].split())
        if token in movies and value:
            key = value.casefold()
            spelling.setdefault(key, value)
            counts.setdefault(token, Counter())[key] += 1
    return {token: [spelling[k] for k, _ in c.most_common(MAX_TAGS)] for token, c in counts.items()}
