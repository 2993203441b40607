"""Importers: real data from ../shared/data where present, small fixtures written in tmp_path,
and a real HTTP server on 127.0.0.1 for the Amazon image downloads."""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from benchmark.data.atomic import read_atomic
from benchmark.data.dataset import load_dataset
from benchmark.data.importers import (
    download,
    import_amazon_raw,
    import_atomic_folder,
    import_ml100k,
    import_movielens_csv,
    import_sequence_file,
)
from benchmark.data.importers.amazon import read_records
from benchmark.data.importers.atomic_folder import ml100k_dir
from benchmark.data.importers.common import build_text
from benchmark.errors import DataError

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"real data folder {SHARED} absent (only CI and dev machines have it)")


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def image_bytes(fmt: str = "JPEG", color: tuple = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, fmt)
    return buf.getvalue()


def inter_rows(root: Path, name: str) -> list[tuple]:
    t = read_atomic(root / f"{name}.inter")
    return list(zip(*(t.columns[f] for f in t.fields)))


# --- MovieLens-100K (recbole wheel) --------------------------------------------------------------

def test_ml100k_without_posters_keeps_file_order(tmp_path):
    root = import_ml100k(tmp_path / "ml")
    m = manifest(root)
    assert m["counts"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert m["coverage"]["items_with_readable_image"] == 0
    assert m["source"]["importer"] == "ml100k"
    src = read_atomic(ml100k_dir() / "ml-100k.inter")
    out = read_atomic(root / "ml-100k.inter")
    assert out.fields == ["user_id", "item_id", "timestamp", "rating"]
    assert out.types["rating"] == "float"
    for field in out.fields:  # exactly the source order, rating kept
        assert out.columns[field] == src.columns[field]
    ds = load_dataset(root)
    toy = int(list(ds.item_tokens).index("1"))
    assert ds.item_fields["title"][toy] == "Toy Story"
    assert ds.item_text(toy) == "Toy Story. Year: 1995. Genres: Animation, Children's, Comedy"
    assert ds.image_path(toy) is None


@needs_shared
def test_ml100k_with_posters(tmp_path):
    root = import_ml100k(tmp_path / "ml", images=SHARED / "ml-100k-posters")
    m = manifest(root)
    assert m["coverage"]["items_with_readable_image"] == 1662
    assert m["coverage"]["image_problems"] == {"no image entry": 20}
    assert m["source"]["images"] == {"items": 1682, "with_image": 1662, "without_image": 20}
    ds = load_dataset(root)
    toy = int(list(ds.item_tokens).index("1"))
    assert ds.image_path(toy) == root / "images" / "1.jpg"
    poster = SHARED / "ml-100k-posters" / "1.jpg"
    assert (root / "images" / "1.jpg").read_bytes() == poster.read_bytes()
    assert len(list((root / "images").iterdir())) == 1662


# --- sequence file + item TSV --------------------------------------------------------------------

@needs_shared
def test_amazon_beauty_sequences(tmp_path):
    beauty = SHARED / "amazon-beauty"
    root = import_sequence_file(beauty / "sequences.txt", beauty / "items.tsv", tmp_path / "b",
                                "beauty")
    m = manifest(root)
    assert m["counts"] == {"users": 22363, "items": 12101, "interactions": 198502}
    assert m["coverage"]["items_with_text"] == 12101
    assert m["source"]["items_without_interactions"] == 0
    rows = inter_rows(root, "beauty")
    assert rows[:5] == [("1", "1", 0.0), ("1", "2", 1.0), ("1", "3", 2.0), ("1", "4", 3.0),
                        ("1", "5", 4.0)]
    item = read_atomic(root / "beauty.item")
    assert item.fields == ["item_id", "title", "text", "image", "asin", "attributes"]
    assert item.columns["text"][0] == ("OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce. "
                                       "Attributes: OPI, Makeup, Nails, Nail Polish")
    assert item.columns["asin"][0] == "B004756YJA"


def test_sequence_file_with_item_table(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(image_bytes("PNG"))
    seq = tmp_path / "seq.txt"
    seq.write_text("u1 a b c\nu2\tc a\n\n", encoding="utf-8")
    tsv = tmp_path / "items.tsv"
    tsv.write_text("ID\tName\tBrand\tCategories\tDescription\tImage\tprice\n"
                   'a\tThe "A"\tAcme\tx|y|x\tFirst item.\tpics/a.png\t3\n'
                   "b\tB!\t\t\t\t\t\n"
                   "c\tC\tAcme\ty\t\tpics/nope.png\t\n"
                   "z\tNever bought\t\t\t\t\t\n", encoding="utf-8")
    root = import_sequence_file(seq, tsv, tmp_path / "out", "mini")
    assert inter_rows(root, "mini") == [("u1", "a", 0.0), ("u1", "b", 1.0), ("u1", "c", 2.0),
                                        ("u2", "c", 0.0), ("u2", "a", 1.0)]
    item = read_atomic(root / "mini.item")
    assert item.columns["item_id"] == ["a", "b", "c"]
    assert item.columns["text"] == [
        "The \u201dA\u201d. Brand: Acme. Categories: x, y. Price: 3. First item.",
        "B!", "C. Brand: Acme. Categories: y"]
    assert item.columns["image"] == ["images/a.png", "", ""]
    assert item.columns["price"] == ["3", "", ""]
    m = manifest(root)
    assert m["coverage"]["items_with_readable_image"] == 1
    assert m["source"]["items_without_interactions"] == 1
    assert m["source"]["images"]["without_image"] == 2


@pytest.mark.parametrize("content, message", [
    (b"u1 a b\nu2 \xff\xfe c\n", r"seq\.txt:2: not valid UTF-8 \(byte 0xff"),
    (b"u1 a b\n\nu2 c\n", r"seq\.txt:2: empty line"),
    (b"u1 a b\nu2\nu3 c\n", r"seq\.txt:2: user 'u2' has no items"),
    (b"u1 a b\nu2 c\nu1 d\n", r"seq\.txt:3: user 'u1' appears again \(first on line 1\)"),
    (b"\n\n", r"no sequences"),
])
def test_sequence_file_bad_input(tmp_path, content, message):
    seq = tmp_path / "seq.txt"
    seq.write_bytes(content)
    with pytest.raises(DataError, match=message):
        import_sequence_file(seq, None, tmp_path / "out", "bad")


@pytest.mark.parametrize("content, message", [
    ("sku\ttitle\nx\ty\n", r"items\.tsv: no item id column \(expected one of: item_id"),
    ("item_id\ttitle\na\tA\tstray\n", r"items\.tsv:2: expected 2 fields"),
    ("item_id\ttitle\na\tA\na\tA again\n", r"items\.tsv:3: item 'a' appears again"),
    ("", r"items\.tsv: empty file"),
])
def test_item_table_bad_input(tmp_path, content, message):
    seq = tmp_path / "seq.txt"
    seq.write_text("u1 a b\n", encoding="utf-8")
    tsv = tmp_path / "items.tsv"
    tsv.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        import_sequence_file(seq, tsv, tmp_path / "out", "bad")


def test_output_folder_holding_another_dataset_is_refused(tmp_path):
    seq = tmp_path / "seq.txt"
    seq.write_text("u1 a b\n", encoding="utf-8")
    import_sequence_file(seq, None, tmp_path / "out", "one")
    import_sequence_file(seq, None, tmp_path / "out", "one")  # re-import of the same dataset
    with pytest.raises(DataError, match="already holds another dataset"):
        import_sequence_file(seq, None, tmp_path / "out", "two")


# --- MovieLens CSV releases ----------------------------------------------------------------------

def test_movielens_csv(tmp_path):
    src = tmp_path / "ml-latest-small"
    src.mkdir()
    (src / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,11,4.0,300\n1,1,5.0,100\n1,2,3.5,200\n"
        "2,2,4.0,50\n2,1,2.0,50\n2,11,1.0,10\n", encoding="utf-8")
    (src / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        "2,Jumanji (1995),(no genres listed)\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '99,"Never Rated, The (2001)",Drama\n', encoding="utf-8")
    (src / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "1,1,pixar,1\n2,1,Funny,2\n1,1,funny,3\n2,1,  ,4\n1,11,politics,5\n1,99,unused,6\n",
        encoding="utf-8")
    posters = tmp_path / "posters"
    posters.mkdir()
    (posters / "11.png").write_bytes(image_bytes("PNG"))
    (posters / "1.jpg").write_bytes(image_bytes("JPEG"))
    (posters / "1.png").write_bytes(image_bytes("PNG"))  # .jpg is preferred
    root = import_movielens_csv(src, tmp_path / "out", "ml-small", posters=posters)
    assert inter_rows(root, "ml-small") == [  # per user by time; ties keep file order
        ("1", "1", 100.0, 5.0), ("1", "2", 200.0, 3.5), ("1", "11", 300.0, 4.0),
        ("2", "11", 10.0, 1.0), ("2", "2", 50.0, 4.0), ("2", "1", 50.0, 2.0)]
    item = read_atomic(root / "ml-small.item")
    assert item.columns["item_id"] == ["1", "2", "11"]
    assert item.columns["title"][2] == "American President, The (1995)"
    assert item.columns["text"] == [
        "Toy Story (1995). Genres: Adventure, Animation, Children. Tags: Funny, pixar",
        "Jumanji (1995)",
        "American President, The (1995). Genres: Comedy, Drama, Romance. Tags: politics"]
    assert item.columns["genres"][0] == "Adventure Animation Children"
    assert item.columns["image"] == ["images/1.jpg", "", "images/11.png"]
    m = manifest(root)
    assert m["counts"] == {"users": 2, "items": 3, "interactions": 6}
    assert m["coverage"]["items_with_readable_image"] == 2
    assert m["source"]["items_without_interactions"] == 1


def test_movielens_csv_errors(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,soon\n",
                                          encoding="utf-8")
    (tmp_path / "movies.csv").write_text("movieId,title\n1,A\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ratings\.csv:2: timestamp is not a number: 'soon'"):
        import_movielens_csv(tmp_path, tmp_path / "out", "x")
    (tmp_path / "ratings.csv").write_text("user,movie,rating\n1,1,4\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ratings\.csv: no userId column"):
        import_movielens_csv(tmp_path, tmp_path / "out", "x")


# --- RecBole atomic folders ----------------------------------------------------------------------

def test_atomic_folder_with_recbole_names(tmp_path):
    src = tmp_path / "src"
    (src / "covers").mkdir(parents=True)
    (src / "covers" / "i1.jpg").write_bytes(image_bytes())
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "i2.png").write_bytes(image_bytes("PNG"))
    (src / "shop.inter").write_text(
        "uid:token\tiid:token\tclicks:float\ttime:float\n"
        "u1\ti1\t2\t10\nu1\ti2\t\t5\nu2\ti2\t1\t7\n", encoding="utf-8")
    (src / "shop.item").write_text(
        "iid:token\tproduct_title:token_seq\tcategories:token_seq\tsku_id:token\t"
        "price:float\tcover:token\n"
        "i1\tRed Mug\tKitchen Cups\tS1\t9.5\tcovers/i1.jpg\n"
        "i2\tBlue Mug\tKitchen\tS2\t\t\n"
        "i3\tUnsold\t\tS3\t1\t\n", encoding="utf-8")
    root = import_atomic_folder(src, tmp_path / "out", images=tmp_path / "pics")
    assert (root / "shop.inter").is_file()
    out = read_atomic(root / "shop.inter")
    assert out.fields == ["user_id", "item_id", "timestamp", "clicks"]
    assert list(zip(*out.columns.values())) == [("u1", "i1", 10.0, 2.0), ("u1", "i2", 5.0, None),
                                                ("u2", "i2", 7.0, 1.0)]
    item = read_atomic(root / "shop.item")
    assert item.fields == ["item_id", "title", "text", "image", "categories", "sku_id", "price"]
    assert item.types["price"] == "float"
    assert item.columns["title"] == ["Red Mug", "Blue Mug", "Unsold"]
    assert item.columns["text"] == ["Red Mug. Categories: Kitchen, Cups",
                                    "Blue Mug. Categories: Kitchen", "Unsold"]
    assert item.columns["image"] == ["images/i1.jpg", "images/i2.png", ""]
    assert manifest(root)["coverage"]["items_with_readable_image"] == 2


def test_atomic_folder_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.inter").write_text("who:token\titem_id:token\nu\ti\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.inter: no user id column"):
        import_atomic_folder(src, tmp_path / "out")
    (src / "a.inter").write_text("user_id:token\titem_id:token\tts:token\nu\ti\tx\n",
                                 encoding="utf-8")
    with pytest.raises(DataError, match="timestamp column 'ts' must be of type float"):
        import_atomic_folder(src, tmp_path / "out")
    (src / "a.inter").write_text("user_id:token\titem_id:token\nu\ti\tx\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.inter:2: expected 2 tab-separated fields"):
        import_atomic_folder(src, tmp_path / "out")
    (src / "a.inter").write_text("user_id:token\titem_id:token\nu\ti\n", encoding="utf-8")
    with pytest.raises(DataError, match="must differ from the input folder"):
        import_atomic_folder(src, src)
    (src / "b.inter").write_text("user_id:token\titem_id:token\n", encoding="utf-8")
    with pytest.raises(DataError, match="expected exactly one .inter file"):
        import_atomic_folder(src, tmp_path / "out")


# --- raw Amazon reviews, images over real HTTP ---------------------------------------------------

JPEG = image_bytes("JPEG")
PNG = image_bytes("PNG", (10, 120, 240))
SLOW_S = 2.0
TIMEOUT_S = 0.6


class ImageServer:
    """An HTTP server on 127.0.0.1 (port 0) with good, missing, broken and slow images."""

    def __init__(self):
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with server.lock:
                    server.requests[self.path] += 1
                    n = server.requests[self.path]
                if self.path == "/always-slow.jpg" or (self.path == "/slow-once.jpg" and n == 1):
                    time.sleep(SLOW_S)
                body, status, length = {
                    "/good.jpg": (JPEG, 200, None), "/good.png": (PNG, 200, None),
                    "/slow-once.jpg": (JPEG, 200, None), "/always-slow.jpg": (JPEG, 200, None),
                    "/truncated.jpg": (JPEG[: len(JPEG) // 2], 200, None),
                    "/short.jpg": (JPEG[:100], 200, len(JPEG)),
                }.get(self.path, (b"not found", 404, None))
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(length or len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "BACKOFF_S", 0.01)
    srv = ImageServer()
    yield srv
    srv.close()


def write_lines(path: Path, records: list, loose: bool = False) -> Path:
    text = "".join((repr(r) if loose else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_amazon_2014_layout_k_core_and_image_cache(tmp_path, server):
    # 2-core: E has one review -> u5 keeps one -> D keeps one -> u4 keeps one: all four go.
    reviews = [("u1", "C", 300), ("u1", "A", 100), ("u1", "B", 200), ("u2", "A", 50),
               ("u2", "B", 50), ("u3", "B", 10), ("u3", "C", 20), ("u4", "D", 1),
               ("u4", "C", 2), ("u5", "D", 3), ("u5", "E", 4)]
    review_file = write_lines(tmp_path / "reviews_Beauty.json.gz", [
        {"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0, "reviewText": "ok"}
        for u, i, t in reviews])
    url = server.url
    meta_file = write_lines(tmp_path / "meta_Beauty.json", [  # python literals: "loose JSON"
        {"asin": "A", "title": "Alpha &amp; Co", "brand": "Acme", "imUrl": f"{url}/good.jpg",
         "categories": [["Beauty", "Makeup"], ["Beauty", "Nails"]],
         "description": "Nice <b>bold</b> colour."},
        {"asin": "B", "title": "Beta", "imUrl": f"{url}/missing.jpg", "categories": [["Beauty"]]},
        {"asin": "C", "title": "Gamma", "imUrl": f"{url}/truncated.jpg"},
        {"asin": "D", "title": "Delta", "imUrl": f"{url}/good.png"},
    ], loose=True)
    cache = tmp_path / "cache"
    run = {"k_core": 2, "workers": 4, "cache_dir": cache, "timeout": TIMEOUT_S, "retries": 2}
    root = import_amazon_raw(review_file, meta_file, tmp_path / "out", "beauty", **run)
    assert inter_rows(root, "beauty") == [
        ("u1", "A", 100.0, 5.0), ("u1", "B", 200.0, 5.0), ("u1", "C", 300.0, 5.0),
        ("u2", "A", 50.0, 5.0), ("u2", "B", 50.0, 5.0), ("u3", "B", 10.0, 5.0),
        ("u3", "C", 20.0, 5.0)]
    item = read_atomic(root / "beauty.item")
    assert item.columns["item_id"] == ["A", "B", "C"]
    assert item.columns["text"][0] == ("Alpha & Co. Brand: Acme. Categories: Beauty, Makeup, "
                                       "Nails. Nice bold colour.")
    assert item.columns["image"] == ["images/A.jpg", "", ""]
    m = manifest(root)
    assert m["counts"] == {"users": 3, "items": 3, "interactions": 7}
    assert m["coverage"]["items_with_readable_image"] == 1
    got = m["source"]["download"]
    assert (got["ok"], got["missing"], got["failed"]) == (1, 2, 0)
    assert got["reasons"] == {"HTTP 404": 1, "corrupt or not an image": 1}
    assert m["source"]["reviews_read"] == 11
    # 404 and a corrupt image are permanent: asked once, never retried
    assert server.requests == {"/good.jpg": 1, "/missing.jpg": 1, "/truncated.jpg": 1}

    before = dict(server.requests)
    root = import_amazon_raw(review_file, meta_file, tmp_path / "out", "beauty", **run)
    assert dict(server.requests) == before  # everything came from the cache
    again = manifest(root)
    assert again["source"]["download"]["from_cache"] == 3
    assert again["content_hash"] == m["content_hash"]

    root = import_amazon_raw(review_file, meta_file, tmp_path / "out", "beauty", images=False,
                             k_core=2)
    assert manifest(root)["coverage"]["items_with_readable_image"] == 0
    assert not list((root / "images").iterdir())  # images of the earlier import are gone
    assert dict(server.requests) == before


def test_amazon_2023_layout_timeouts_and_retries(tmp_path, server):
    url = server.url
    items = {"P1": "good.png", "P2": "slow-once.jpg", "P3": "always-slow.jpg", "P4": "short.jpg",
             "P5": None}
    reviews = [{"user_id": u, "asin": f"{p}-variant", "parent_asin": p, "rating": 4.0,
                "timestamp": 1_600_000_000_000 + 1000 * n}
               for n, (u, p) in enumerate((u, p) for u in ("U1", "U2", "U3") for p in items)]
    reviews.append({"user_id": "U4", "parent_asin": "P1", "timestamp": 1, "rating": 1.0})
    review_file = write_lines(tmp_path / "Beauty.jsonl", reviews)
    meta_file = write_lines(tmp_path / "meta_Beauty.jsonl.gz", [
        {"parent_asin": p, "title": f"Product {p}", "store": "Shop",
         "categories": ["Beauty", "Skin"], "description": ["Line one.", "Line two."],
         "images": [] if img is None else [
             {"variant": "PT01", "large": f"{url}/missing.jpg"},
             {"variant": "MAIN", "thumb": f"{url}/missing.jpg", "large": f"{url}/{img}",
              "hi_res": None}]}
        for p, img in items.items()])
    run = {"k_core": 3, "workers": 8, "cache_dir": tmp_path / "cache", "timeout": TIMEOUT_S,
           "retries": 1}
    root = import_amazon_raw(review_file, meta_file, tmp_path / "out", "beauty23", **run)
    rows = inter_rows(root, "beauty23")
    assert len(rows) == 15 and {r[0] for r in rows} == {"U1", "U2", "U3"}  # U4 fails the 3-core
    assert rows[0] == ("U1", "P1", 1_600_000_000.0, 4.0)  # ms -> s
    assert rows[1][2] == 1_600_000_001.0
    item = read_atomic(root / "beauty23.item")
    assert item.columns["text"][0] == ("Product P1. Brand: Shop. Categories: Beauty, Skin. "
                                       "Line one. Line two.")
    assert item.columns["image_url"][0] == f"{url}/good.png"
    assert item.columns["image"] == ["images/P1.png", "images/P2.jpg", "", "", ""]
    got = manifest(root)["source"]["download"]
    assert (got["ok"], got["missing"], got["failed"]) == (2, 1, 2)
    assert got["reasons"] == {"connection closed before the end of the image": 1,
                              "no image URL": 1, "timeout": 1}
    assert server.requests["/slow-once.jpg"] == 2  # timed out once, then fine
    assert server.requests["/always-slow.jpg"] == 2  # first try + 1 retry
    assert server.requests["/short.jpg"] == 2
    assert manifest(root)["coverage"]["items_with_readable_image"] == 2

    before = Counter(server.requests)
    import_amazon_raw(review_file, meta_file, tmp_path / "out", "beauty23", **run)
    grown = {path for path in server.requests if server.requests[path] != before[path]}
    assert grown == {"/always-slow.jpg", "/short.jpg"}  # only failures are tried again


def test_amazon_errors(tmp_path):
    meta = write_lines(tmp_path / "meta.json", [{"asin": "A"}])
    bad = tmp_path / "reviews.json"
    bad.write_text('{"reviewerID": "u", "asin": "A", "unixReviewTime": 1}\n'
                   '{"reviewerID": "u", "asin": "B"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"reviews\.json:2: no time"):
        import_amazon_raw(bad, meta, tmp_path / "out", "x", images=False)
    bad.write_text('{"asin": "A", "unixReviewTime": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"reviews\.json:1: no user id"):
        import_amazon_raw(bad, meta, tmp_path / "out", "x", images=False)
    write_lines(bad, [{"reviewerID": "u", "asin": "A", "unixReviewTime": 1}])
    with pytest.raises(DataError, match="no interactions left after 5-core filtering"):
        import_amazon_raw(bad, meta, tmp_path / "out", "x", images=False)
    broken = tmp_path / "reviews.json.gz"
    line = b'{"reviewerID": "u", "asin": "A", "unixReviewTime": 1}\n'
    broken.write_bytes(gzip.compress(line * 1000)[:60])
    with pytest.raises(DataError, match=r"reviews\.json\.gz:\d+: cannot read"):
        import_amazon_raw(broken, meta, tmp_path / "out", "x", images=False)


def test_read_records_loose_json_is_never_evaluated(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("{'asin': 'A', 'categories': [['x', 'y']], 'price': 1.5}\n"
                    '{"asin": "B"}\n\n'
                    "__import__('os').system('echo hacked')\n", encoding="utf-8")
    records = read_records(path)
    assert next(records) == (1, {"asin": "A", "categories": [["x", "y"]], "price": 1.5})
    assert next(records) == (2, {"asin": "B"})
    with pytest.raises(DataError, match=r"meta\.json:4: not a JSON object"):
        next(records)


def test_build_text():
    assert build_text("Title", [("Brand", "X"), ("Categories", ["a", "b", "A", " "])],
                      "Some description.") == "Title. Brand: X. Categories: a, b. Some description."
    assert build_text("Wow!", [("Brand", None), ("Tags", [])], ["d1", "d1"]) == "Wow! d1"
    assert build_text("", [("Brand", "X")]) == "Brand: X"


def test_input_inside_the_output_images_folder_is_refused(tmp_path):
    posters = tmp_path / "out" / "images"
    posters.mkdir(parents=True)
    (posters / "1.jpg").write_bytes(image_bytes())
    with pytest.raises(DataError, match="must differ from the input folder"):
        import_ml100k(tmp_path / "out", images=posters)
    assert (posters / "1.jpg").is_file()


def test_amazon_2018_layout_without_images(tmp_path):
    reviews = write_lines(tmp_path / "Luxury_Beauty_5.json", [
        {"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 4.0, "verified": True}
        for t, (u, i) in enumerate([("a", "X"), ("a", "Y"), ("b", "Y"), ("b", "X")])])
    meta = write_lines(tmp_path / "meta_Luxury_Beauty.json.gz", [
        {"asin": "X", "title": "Cream", "brand": "", "category": ["Luxury Beauty", "Skin Care"],
         "description": ["<p>Rich &amp; light.</p>", "Daily use."],
         "imageURLHighRes": ["https://example.invalid/x.jpg"], "feature": ["Vegan"]},
        {"asin": "X", "title": "Duplicate record, ignored"},
        {"asin": "Y", "title": "Serum", "brand": "Lab", "image": ["http://example.invalid/y.jpg"]},
    ])
    root = import_amazon_raw(reviews, meta, tmp_path / "out", "lux", k_core=2, images=False)
    item = read_atomic(root / "lux.item")
    assert item.columns["item_id"] == ["X", "Y"]
    assert item.columns["text"] == [
        "Cream. Categories: Luxury Beauty, Skin Care. Rich & light. Daily use. Vegan",
        "Serum. Brand: Lab"]
    assert item.columns["image_url"] == ["https://example.invalid/x.jpg",
                                         "http://example.invalid/y.jpg"]
    m = manifest(root)
    assert m["counts"] == {"users": 2, "items": 2, "interactions": 4}
    assert m["source"]["images"] == {"items": 2, "with_image": 0, "without_image": 2}
    assert "download" not in m["source"]
