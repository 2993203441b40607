"""Image downloads for importers: parallel, cached on disk, retried, verified (urllib only).

Every URL maps to a cache file named by the URL's hash. A verified image is stored there and a
URL that can never give an image (HTTP 404, not an image, ...) gets a small ``.missing`` marker,
so a rerun or a resumed import requests neither again. Network errors and timeouts are retried
with exponential backoff and, when they persist, counted as ``failed`` (a later run tries again).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ...io import atomic_write, atomic_write_text
from ..dataset import check_image

log = logging.getLogger(__name__)

USER_AGENT = "mmrec-bench/0.1 (research dataset importer)"
BACKOFF_S = 0.5  # first retry delay; doubles with each further retry
MAX_IMAGE_BYTES = 20 << 20
RETRY_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Fetched:
    """Outcome for one URL: ``ok`` (``path`` is the cached image), ``missing`` (permanent: no
    image at that address) or ``failed`` (network trouble that outlasted the retries)."""

    status: str
    path: Path | None = None
    reason: str = ""
    cached: bool = False


class _Permanent(Exception):
    """The URL will not give an image however often it is asked."""


class _Transient(Exception):
    """Worth another try."""


def cache_path(cache_dir: Path, url: str) -> Path:
    """Cache file of a URL (``<cache>/<2 hex>/<sha256 of the URL>``)."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()
    return Path(cache_dir) / key[:2] / key


def fetch_image(url: str, cache_dir: Path, timeout: float, retries: int) -> Fetched:
    """The verified image behind ``url``, from the cache or downloaded into it."""
    target = cache_path(cache_dir, url)
    marker = target.with_suffix(".missing")
    if target.is_file():
        return Fetched("ok", target, cached=True)
    if marker.is_file():
        return Fetched("missing", reason=marker.read_text(encoding="utf-8").strip(), cached=True)
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            _store_verified(_http_get(url, timeout), target)
        except _Transient as e:
            reason = str(e)
            continue
        except _Permanent as e:
            atomic_write_text(marker, f"{e}\n")
            return Fetched("missing", reason=str(e))
        return Fetched("ok", target)
    return Fetched("failed", reason=reason)


def _http_get(url: str, timeout: float) -> bytes:
    """Body of an HTTP(S) GET, sorting errors into transient and permanent ones."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _Permanent("not an http(s) URL")
    request = urllib.request.Request(_quote(url), headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_IMAGE_BYTES + 1)
            declared = response.headers.get("Content-Length", "")
    except urllib.error.HTTPError as e:
        if e.code in RETRY_HTTP:
            raise _Transient(f"HTTP {e.code}") from None
        raise _Permanent(f"HTTP {e.code}") from None
    except ValueError as e:  # malformed URL (http.client.InvalidURL is a ValueError)
        raise _Permanent(f"bad URL ({e})") from None
    except TimeoutError:
        raise _Transient("timeout") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise _Transient("timeout") from None
        raise _Transient(f"network error ({e.reason})") from None
    except (OSError, http.client.HTTPException) as e:  # reset connection, broken response
        raise _Transient(f"network error ({type(e).__name__})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _Permanent(f"larger than {MAX_IMAGE_BYTES >> 20} MB")
    if declared.isdigit() and len(data) < int(declared):
        raise _Transient("connection closed before the end of the image")
    return data


def _quote(url: str) -> str:
    """Percent-encode characters (spaces, non-ASCII) that http.client refuses in a URL."""
    return urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")


def _store_verified(data: bytes, target: Path) -> None:
    """Cache ``data`` as ``target`` if it decodes fully as an image (else ``_Permanent``).

    The file appears under its final name only once complete and verified, so an interrupted
    run never leaves a half-written image in the cache.
    """

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        if check_image(tmp) is not None:
            raise _Permanent("corrupt or not an image")

    atomic_write(target, write)


def download_images(urls: Mapping[str, str | None], cache_dir: Path, workers: int = 8,
                    timeout: float = 10, retries: int = 3) -> tuple[dict[str, Path], dict]:
    """Fetch the image of every item (item -> URL or None) in parallel.

    Returns item -> cached image path for the items that have one, and counts:
    ``ok + missing + failed`` = number of items; ``from_cache`` and ``requested`` split the
    distinct URLs by where the answer came from; ``reasons`` counts why images are missing or
    failed.
    """
    from tqdm import tqdm

    by_url: dict[str, list[str]] = {}
    for item, url in urls.items():
        if url and url.strip():
            by_url.setdefault(url.strip(), []).append(item)
    reasons: Counter[str] = Counter()
    status: Counter[str] = Counter()
    no_url = len(urls) - sum(len(items) for items in by_url.values())
    if no_url:
        status["missing"] += no_url
        reasons["no image URL"] += no_url
    fetched_from = Counter[str]()
    images: dict[str, Path] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="image-download")
    try:
        futures = {pool.submit(fetch_image, url, cache_dir, timeout, retries): url
                   for url in by_url}
        for future in tqdm(as_completed(futures), total=len(futures), desc="images",
                           unit="img", disable=None):
            result = future.result()
            items = by_url[futures[future]]
            status[result.status] += len(items)
            fetched_from["from_cache" if result.cached else "requested"] += 1
            if result.path is not None:
                images.update((item, result.path) for item in items)
            else:
                reasons[result.reason] += len(items)
    finally:  # on Ctrl-C do not start the queued downloads; finished ones stay cached
        pool.shutdown(wait=True, cancel_futures=True)
    counts = {"items": len(urls), "ok": status["ok"], "missing": status["missing"],
              "failed": status["failed"], "urls": len(by_url),
              "from_cache": fetched_from["from_cache"], "requested": fetched_from["requested"],
              "reasons": dict(sorted(reasons.items()))}
    log.info("images: %d ok, %d missing, %d failed (%d from cache)", counts["ok"],
             counts["missing"], counts["failed"], counts["from_cache"])
    return images, counts
