"""The controlled-modality synthetic dataset: the harness's embedded default.

Every item has a visual-only attribute pair (colour, shape) drawn into its image, a textual-only
pair (brand, product) written in its title and description, and a latent collaborative group in
neither. User sequences follow a stochastic process in which each next item shares the visual
pair, the textual pair or the group of a recent item, or is popularity noise, and every
interaction records the rule that generated it. A share of items is cold: never in a training
position, only a validation/test target. The process, knobs and guarantees are documented in
``docs/synthetic.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import stable_hash
from .dataset import write_dataset

GENERATOR_VERSION = 2  # 2: validation/test targets drawn with equal per-item frequency
DATASET_NAME = "synthetic"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (230, 215, 40),
    "green": (40, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 215),
    "purple": (130, 45, 185),
    "pink": (240, 120, 185),
}
SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
BRANDS = ("zorvex", "quandel", "brimso", "talvik", "nerapo", "voskin", "lumetra", "jaxby")
PRODUCTS = ("kettle", "lamp", "backpack", "mug", "notebook", "speaker")
N_GROUPS = len(COLORS) * len(SHAPES)  # same size as the attribute-pair spaces: equal difficulty
FILLER = (
    "quality", "everyday", "durable", "classic", "practical", "compact", "modern", "reliable",
    "handy", "versatile", "original", "essential", "comfortable", "sturdy", "useful", "simple",
    "premium", "lightweight", "new", "favourite", "trusted", "great", "value", "edition",
    "design", "choice", "series", "model", "genuine", "popular",
)
FILLER_WORDS = (6, 12)  # filler words per description, inclusive range

RULES = ("visual", "textual", "collaborative", "popularity")
START = "start"
SIGNALS = (*RULES, START)
_ATTRIBUTE_RULES = RULES[:3]

_INT_KNOBS = ("n_users", "n_items", "image_size", "window", "seed")
_RATE_KNOBS = ("s_v", "s_t", "s_cf", "cold_share", "missing_image_rate", "missing_text_rate",
               "redundancy")
_OPTIONAL_RATE_KNOBS = ("cold_target_rate",)  # None: a documented default behaviour
_SUPERSAMPLE = 4  # shapes are drawn at this multiple of the image size, then area-averaged


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic dataset; see ``docs/synthetic.md`` for their meaning."""

    n_users: int = 2000
    n_items: int = 500
    s_v: float = 0.25  # P(next item shares the colour+shape of a recent item)
    s_t: float = 0.25  # P(next item shares the brand+product of a recent item)
    s_cf: float = 0.25  # P(next item shares the latent group of a recent item)
    cold_share: float = 0.4  # share of items never in a training position
    # P(a validation/test target is drawn from the cold items); None: the cold share of the
    # items, so cold and warm items are targets equally often per item (a higher rate lets
    # "rank never-trained items first" win cold cases without reading any content)
    cold_target_rate: float | None = None
    image_size: int = 32
    missing_image_rate: float = 0.0
    missing_text_rate: float = 0.0
    redundancy: float = 0.0  # share of items whose title and description also name the colour
    seq_len: tuple[int, int] = (8, 20)  # inclusive range of interactions per user
    window: int = 3  # how many of the latest items count as "recent"
    zipf: float = 1.0  # exponent of the popularity-noise distribution
    seed: int = 0

    def __post_init__(self) -> None:
        for name in _INT_KNOBS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"synthetic: {name}={value!r} must be an integer")
        optional = [n for n in _OPTIONAL_RATE_KNOBS if getattr(self, n) is not None]
        for name in (*_RATE_KNOBS, *optional, "zipf"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"synthetic: {name}={value!r} must be a number")
            object.__setattr__(self, name, float(value))  # 1 and 1.0 give the same key()
        seq_len = self.seq_len
        if (not isinstance(seq_len, (tuple, list)) or len(seq_len) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in seq_len)
                or not 3 <= seq_len[0] <= seq_len[1]):
            raise ConfigError(f"synthetic: seq_len={seq_len!r} must be (min, max) integers with "
                              "3 <= min <= max (training part + validation + test)")
        object.__setattr__(self, "seq_len", tuple(seq_len))
        for name in (*_RATE_KNOBS, *optional):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"synthetic: {name}={value} must be in [0, 1]")
        total = self.s_v + self.s_t + self.s_cf
        if total > 1.0 + 1e-9:
            raise ConfigError(f"synthetic: s_v + s_t + s_cf = {total:g} must be at most 1 "
                              "(the remainder is popularity noise)")
        for name, low in (("n_users", 1), ("window", 1), ("image_size", 16)):
            if getattr(self, name) < low:
                raise ConfigError(f"synthetic: {name}={getattr(self, name)} must be >= {low}")
        if self.zipf < 0:
            raise ConfigError(f"synthetic: zipf={self.zipf} must be >= 0")
        if self.seed < 0:
            raise ConfigError(f"synthetic: seed={self.seed} must be >= 0")
        warm = self.n_items - self.n_cold
        if warm < self.seq_len[1]:
            raise ConfigError(
                f"synthetic: n_items={self.n_items} with cold_share={self.cold_share} leaves "
                f"{warm} warm items, fewer than the longest sequence ({self.seq_len[1]})")

    @property
    def n_cold(self) -> int:
        return round(self.cold_share * self.n_items)

    @property
    def target_cold_rate(self) -> float:
        """P(a validation/test target is drawn from the cold items first): ``cold_target_rate``,
        or by default the cold share of the items (equal target frequency per item)."""
        if self.cold_target_rate is None:
            return self.n_cold / self.n_items
        return self.cold_target_rate

    def key(self) -> str:
        """Short stable hash of the knobs and the generator version (a cache folder name)."""
        return stable_hash({"version": GENERATOR_VERSION, **asdict(self)}, length=12)


@dataclass
class _Items:
    """Latent attributes of every item, as integer codes indexed by item number."""

    color: np.ndarray
    shape: np.ndarray
    brand: np.ndarray
    product: np.ndarray
    group: np.ndarray
    cold: np.ndarray  # bool
    popularity: np.ndarray  # Zipf weight of each item for popularity noise

    def rule_key(self, rule: str) -> np.ndarray:
        """Per item, the value a next item must share with a recent item under ``rule``."""
        if rule == "visual":
            return self.color * len(SHAPES) + self.shape
        if rule == "textual":
            return self.brand * len(PRODUCTS) + self.product
        return self.group


def _draw_items(config: SyntheticConfig, rng: np.random.Generator) -> _Items:
    n = config.n_items
    cold = np.zeros(n, dtype=bool)
    cold[rng.permutation(n)[: config.n_cold]] = True
    rank = rng.permutation(n)
    return _Items(
        color=rng.integers(len(COLORS), size=n),
        shape=rng.integers(len(SHAPES), size=n),
        brand=rng.integers(len(BRANDS), size=n),
        product=rng.integers(len(PRODUCTS), size=n),
        group=rng.integers(N_GROUPS, size=n),
        cold=cold,
        popularity=1.0 / (rank + 1.0) ** config.zipf,
    )


class _Process:
    """The sequence process: draws each user's items and labels each with its rule."""

    def __init__(self, items: _Items, config: SyntheticConfig, rng: np.random.Generator):
        self.items, self.config, self.rng = items, config, rng
        self.keys = {rule: items.rule_key(rule) for rule in _ATTRIBUTE_RULES}
        self.pools = (~items.cold, items.cold)  # 0 = warm, 1 = cold
        self.members = {
            rule: [{int(k): np.flatnonzero(pool & (key == k)) for k in np.unique(key[pool])}
                   for pool in self.pools]
            for rule, key in self.keys.items()
        }
        strengths = [config.s_v, config.s_t, config.s_cf]
        self.rule_p = np.array([*strengths, max(0.0, 1.0 - sum(strengths))])
        self.rule_p /= self.rule_p.sum()

    def sequence(self, length: int) -> list[tuple[int, str]]:
        consumed = np.zeros(self.config.n_items, dtype=bool)
        history: list[int] = []
        labels: list[str] = []
        for pos in range(length):
            if pos < length - 2:
                pools = [0]
            else:  # validation/test position: cold items become eligible
                first = int(self.rng.random() < self.config.target_cold_rate)
                pools = [first, 1 - first]
            rule = START if pos == 0 else RULES[self.rng.choice(len(RULES), p=self.rule_p)]
            item = self._draw(rule, history, consumed, pools)
            if item is None:  # no unconsumed item satisfies the rule: popularity noise instead
                rule = "popularity"
                item = self._draw(rule, history, consumed, pools)
            assert item is not None  # the warm pool always has an unconsumed item (validated)
            consumed[item] = True
            history.append(item)
            labels.append(rule)
        return list(zip(history, labels))

    def _draw(self, rule: str, history: list[int], consumed: np.ndarray,
              pools: list[int]) -> int | None:
        for pool in pools:
            if rule in _ATTRIBUTE_RULES:
                members = self.members[rule][pool]
                recent = {int(self.keys[rule][i]) for i in history[-self.config.window:]}
                found = [members[k] for k in sorted(recent) if k in members]
                if not found:
                    continue
                candidates = np.unique(np.concatenate(found))
                candidates = candidates[~consumed[candidates]]
                if len(candidates):
                    return int(self.rng.choice(candidates))
            else:
                weights = self.items.popularity * (self.pools[pool] & ~consumed)
                if weights.sum() > 0:
                    return int(self.rng.choice(len(weights), p=weights / weights.sum()))
        return None


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius ``r``, rotated by ``angle`` radians."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.pi / 4 + np.arange(4) * np.pi / 2]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    elif shape == "star":
        pts = [(rad * math.cos(a), rad * math.sin(a))
               for a, rad in zip(-np.pi / 2 + np.arange(10) * np.pi / 5, [1.0, 0.45] * 5)]
    else:  # cross: a plus sign with arms of half-width w
        w = 0.33
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
               (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _render(color: str, shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One item image (uint8, size x size x 3): a jittered shape on a textured, noisy background."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:size, 0:size] / size
    low = Image.fromarray(rng.normal(0.0, 18.0, (4, 4)).astype(np.float32))  # smooth blotches
    low = np.asarray(low.resize((size, size), Image.BILINEAR))
    phi, freq, amp, phase = rng.uniform([0, 2, 0, 0], [np.pi, 6, 15, 2 * np.pi])  # stripes
    stripes = amp * np.sin(2 * np.pi * freq * (xx * np.cos(phi) + yy * np.sin(phi)) + phase)
    gray = rng.uniform(70, 190) + low + stripes
    background = gray[..., None] + rng.normal(0.0, 6.0, 3)  # faint tint, no attribute in it

    big = size * _SUPERSAMPLE
    r = rng.uniform(0.18, 0.3) * big
    cx, cy = rng.uniform(r, big - r, 2)  # anywhere fully inside the frame
    angle = rng.uniform(-np.pi / 6, np.pi / 6)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape in ("circle", "ring"):
        outer = 0.9 * r
        draw.ellipse((cx - outer, cy - outer, cx + outer, cy + outer), fill=255)
        if shape == "ring":
            inner = 0.5 * r
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    alpha = np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float64)[..., None] / 255
    fill = np.asarray(COLORS[color], dtype=np.float64) + rng.normal(0.0, 12.0, 3)
    pixels = background * (1 - alpha) + fill * alpha + rng.normal(0.0, 10.0, (size, size, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _nested_subset(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of ``round(rate * n)`` items; the permutation is always drawn, so the subsets of
    different rates are nested and the stream of ``rng`` does not depend on the rate."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: round(rate * n)]] = True
    return mask


def _description(words: list[str], rng: np.random.Generator) -> list[str]:
    """``words`` at random places among neutral filler words."""
    filler = list(rng.choice(FILLER, size=rng.integers(FILLER_WORDS[0], FILLER_WORDS[1] + 1)))
    for word in words:
        filler.insert(int(rng.integers(len(filler) + 1)), word)
    return [str(w) for w in filler]


def generate_synthetic(root: str | Path, config: SyntheticConfig = SyntheticConfig()) -> Path:
    """Write the synthetic dataset (``synthetic.inter``, ``synthetic.item``, ``images/``,
    ``manifest.json``) into the folder ``root``; the same config gives byte-identical files."""
    from PIL import Image

    root = Path(root)
    # Independent streams: presentation knobs (images, text, missing rates, redundancy) never
    # change the interactions, and vice versa.
    item_rng, seq_rng, image_rng, text_rng, missing_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5))
    items = _draw_items(config, item_rng)
    no_image = _nested_subset(config.n_items, config.missing_image_rate, missing_rng)
    no_text = _nested_subset(config.n_items, config.missing_text_rate, missing_rng)
    redundant = _nested_subset(config.n_items, config.redundancy, text_rng)

    width = len(str(config.n_items))
    tokens = [f"i{i:0{width}d}" for i in range(config.n_items)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    color_names, item_rows = list(COLORS), []
    for i, token in enumerate(tokens):
        color, shape = color_names[items.color[i]], SHAPES[items.shape[i]]
        brand, product = BRANDS[items.brand[i]], PRODUCTS[items.product[i]]
        pixels = _render(color, shape, config.image_size, image_rng)  # drawn for every item
        image = None
        if not no_image[i]:
            image = f"images/{token}.png"
            Image.fromarray(pixels).save(root / image, format="PNG")
        named = [brand, color, product] if redundant[i] else [brand, product]
        description = " ".join(_description(named, text_rng))
        title, text = ("", "") if no_text[i] else (" ".join(named), description)
        item_rows.append((token, title, text, image, color, shape, brand, product,
                          f"g{items.group[i]:02d}", float(items.cold[i])))

    process = _Process(items, config, seq_rng)
    lo, hi = config.seq_len
    user_width = len(str(config.n_users))
    interactions = []
    for u in range(config.n_users):
        start = int(seq_rng.integers(1_000_000))  # only the order within a user matters
        for pos, (item, signal) in enumerate(process.sequence(int(seq_rng.integers(lo, hi + 1)))):
            interactions.append((f"u{u:0{user_width}d}", tokens[item], start + pos, signal))

    return write_dataset(
        root, DATASET_NAME, interactions, item_rows,
        inter_extra=[("signal", "token")],
        item_extra=[("color", "token"), ("shape", "token"), ("brand", "token"),
                    ("product", "token"), ("group", "token"), ("cold", "float")],
        source={"generator": "synthetic", "version": GENERATOR_VERSION,
                "config": asdict(config)},
    )

