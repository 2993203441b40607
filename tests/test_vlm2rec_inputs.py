"""The embedder's input fast path (pre-tokenised prompt pieces, cached image features, length
buckets, right padding) against the slow path it replaced: every prompt tokenised whole,
expanded in id space, left-padded with an attention mask. Batch tensors must be equal and
embeddings equal to float tolerance, for texts and images, missing images and perturbed
items."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from benchmark.encoders.inputs import PerturbedImage
from methods.vlm2rec import prompts
from methods.vlm2rec.embedder import ItemContent, VLMEmbedder, length_buckets
from methods.vlm2rec.tiny import build_tiny_checkpoint
from methods.vlm2rec.tokens import PromptTokens

WORDS = ["red", "blue", "toy", "car", "doll", "lipstick", "shoe", "running", "beauty", "soft"]
# texts whose ends and starts are the likely trouble for piece-wise tokenisation
TRICKY = ["ends with a full stop.", "Brand 42: lipstick, red!", "10 soft shoes", "café crème",
          "quote's end'", "(bracketed)", "dash -", "x", "3.5 inch", "a  b   c", "…ellipsis…"]
NOISE = {"name": "image_noise", "rate": 1.0, "seed": 3}
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    from PIL import Image

    root = tmp_path_factory.mktemp("vlm2rec_inputs")
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(path)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) for _ in range(6)]
    ckpts = {fam: build_tiny_checkpoint(fam, root / fam, texts + TRICKY, seed=2)
             for fam in ("qwen2-vl", "smolvlm")}
    items = [
        ItemContent(texts[0], images[0]),  # text and image
        ItemContent(texts[1], None),  # missing image
        ItemContent(TRICKY[0], images[1]),
        ItemContent(texts[2], PerturbedImage(images[0], NOISE, None, 7)),  # perturbed image
        ItemContent(None, images[2]),  # no text
        ItemContent(TRICKY[1], root / "missing.png"),  # image file missing
        ItemContent(texts[3], images[3]),
    ]
    return {"root": root, "images": images, "ckpts": ckpts, "items": items}


def _slow_rows(emb: VLMEmbedder, bodies: list[str], payloads: list[list]) -> list[list[int]]:
    """The old path: each prompt tokenised whole, image tokens expanded in id space."""
    fam = emb.family
    rows = []
    for ids, imgs in zip(emb.tokenizer([prompts.wrap(fam.prompt_family, b) for b in bodies])
                         ["input_ids"], payloads):
        cuts = [i for i, t in enumerate(ids) if t == fam.image_token_id]
        assert len(cuts) == len(imgs)
        row, last = [], 0
        for cut, img in zip(cuts, imgs):
            row += ids[last:cut] + fam.image_ids(img)
            last = cut + 1
        rows.append(row + ids[last:])
    return rows


def _slow_embed(emb: VLMEmbedder, rows: list[list[int]], payloads: list[list]) -> torch.Tensor:
    """The old forward: left padding, attention mask, embedding at the last position."""
    fam = emb.family
    length = max(len(r) for r in rows)
    pad = emb.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    flat = [p for row in payloads for p in row]
    inputs = fam.model_inputs(ids, mask.bool(), flat)  # positions from the valid tokens
    out = emb._core(**inputs, attention_mask=mask, use_cache=False, return_dict=True)
    return torch.nn.functional.normalize(out.last_hidden_state[:, -1].float(), dim=-1)


def _capture(emb: VLMEmbedder, monkeypatch) -> list[dict]:
    """Record every model input batch the fast path builds."""
    seen = []
    real = emb.family.model_inputs

    def spy(ids, valid, payloads):
        inputs = real(ids, valid, payloads)
        seen.append({**inputs, "valid": valid, "payloads": list(payloads)})
        return inputs

    monkeypatch.setattr(emb.family, "model_inputs", spy)
    return seen


def _reference_positions(emb: VLMEmbedder, row: list[int], payloads: list) -> torch.Tensor:
    """The model's own position ids of one unpadded prompt."""
    ids = torch.tensor([row])
    if emb.model_type.startswith("qwen") and payloads:
        types = (ids == emb.family.image_token_id).int()
        grid = torch.stack([g for _, g in payloads])
        return emb._core.get_rope_index(ids, types, grid, attention_mask=torch.ones_like(ids))[0]
    return torch.arange(len(row))[None]


@pytest.mark.parametrize("family", ["qwen2-vl", "smolvlm"])
def test_fast_path_batches_equal_the_slow_path(assets, family, monkeypatch):
    emb = VLMEmbedder(assets["ckpts"][family], lora={"r": 4}, image_size=32, history_len=4,
                      bucket_overhead_tokens=16)  # several buckets at this small size
    with torch.no_grad():
        for p in emb.trainable_parameters():  # a non-trivial adapter
            p.normal_(0, 0.1)
    items = assets["items"]
    users = [items[:4], items[2:7], [items[1]], [items[4], items[3]]]
    seen = _capture(emb, monkeypatch)
    with torch.no_grad():
        b_items = emb.encode_items(items)
        b_users = emb.encode_users(users)

    # the slow path's prompts, built from the raw content
    texts = emb._texts([it.text for it in items])
    feats = emb._images([it.image for it in items])
    slot = emb.family.slot
    expected = []  # (prompt ids, payloads) in the order the fast path sends them
    for i, t in enumerate(texts):
        if t:
            expected.append(_slow_rows(emb, [prompts.item_text(t)], [[]])[0] + [[]])
    for i, f in enumerate(feats):
        if f is not None:
            expected.append(_slow_rows(emb, [prompts.item_image(slot)], [[f]])[0] + [[f]])
    n_items = len(expected)
    for h in users:
        ts = [t for t in emb._texts([it.text for it in h[-4:]]) if t]  # history_len 4
        assert ts
        expected.append(_slow_rows(emb, [prompts.user_text(ts)], [[]])[0] + [[]])
    for h in users:
        fs = [f for f in emb._images([it.image for it in h[-4:]]) if f is not None]
        if fs:  # user 2 has no image: no image prompt
            expected.append(_slow_rows(emb, [prompts.user_image(len(fs), slot)], [fs])[0] + [fs])
    assert [x is None for x in feats] == [False, True, False, False, False, True, False]
    assert b_users.image_present.tolist() == [True, True, False, True]

    # each captured batch row = one expected prompt (ids, positions, image features)
    rows = []
    for batch in seen:
        lengths = batch["valid"].sum(1).tolist()
        k = 0
        for b, n in enumerate(lengths):
            ids = batch["input_ids"][b, :n].tolist()
            assert (batch["input_ids"][b, n:] == emb.tokenizer.pad_token_id).all()
            n_img = ids.count(emb.family.image_token_id)
            mine = []  # the batch's payloads in row order: this row's take its image tokens
            while n_img > 0:
                mine.append(batch["payloads"][k])
                n_img -= emb.family.image_ids(batch["payloads"][k]).count(
                    emb.family.image_token_id)
                k += 1
            assert n_img == 0
            pos = batch["position_ids"]
            pos = pos[:, b, :n] if pos.dim() == 3 else pos[b, :n][None]
            rows.append((ids, pos, mine))
    assert len(rows) == len(expected)
    pool = list(expected)
    for ids, pos, mine in rows:  # each row matches one expected prompt: ids and image features
        j = next((j for j, e in enumerate(pool) if e[:-1] == ids and len(e[-1]) == len(mine)
                  and all(a is b for a, b in zip(e[-1], mine))), None)
        assert j is not None, emb.tokenizer.decode(ids)
        want = pool.pop(j)[-1]
        ref = _reference_positions(emb, ids, want)
        # text rows: one position per token (all three M-RoPE axes alike)
        assert torch.equal(*torch.broadcast_tensors(pos, ref.reshape(-1, len(ids))))

    # embeddings: the fast path's branches equal the slow path's forward (per branch batch)
    def slow(prompts_of):
        return _slow_embed(emb, [e[:-1] for e in prompts_of], [e[-1] for e in prompts_of])

    with torch.no_grad():
        n_text = sum(1 for t in texts if t)
        ref_t, ref_v = slow(expected[:n_text]), slow(expected[n_text:n_items])
        ref_ut = slow(expected[n_items:n_items + len(users)])
        ref_uv = slow(expected[n_items + len(users):])
    assert len(expected) == n_items + len(users) + 3
    assert torch.allclose(b_items.text[b_items.text_present], ref_t, atol=TOL)
    assert torch.allclose(b_items.image[b_items.image_present], ref_v, atol=TOL)
    assert torch.allclose(b_users.text[b_users.text_present], ref_ut, atol=TOL)
    assert torch.allclose(b_users.image[b_users.image_present], ref_uv, atol=TOL)


def test_perturbed_images_have_their_own_cached_features(assets):
    emb = VLMEmbedder(assets["ckpts"]["qwen2-vl"], image_size=32)
    clean, noisy = assets["images"][0], assets["items"][3].image
    assert str(noisy) != str(clean)  # the cache key names the perturbation
    f_clean, f_noisy = emb._images([clean, noisy])
    direct = emb.family.encode_images(emb._core, emb.family.preprocess([noisy.open()]))[0]
    # (computed in another vision-tower batch: equal to float tolerance)
    assert torch.allclose(f_noisy[0], direct[0], atol=TOL) and torch.equal(f_noisy[1], direct[1])
    assert not torch.allclose(f_clean[0], f_noisy[0])
    again = PerturbedImage(clean, {**NOISE, "seed": 4}, None, 7)  # another draw: another key
    assert not torch.allclose(emb._images([again])[0][0], f_noisy[0])


# pre-tokenizer patterns: Qwen2's (joins punctuation with the newline after it) and one that
# attaches a space to the word before it (so its BPE learns merges across our piece cuts)
PATTERNS = {
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "trailing": r"\S+\s?|\s+",
}


def _trained(stand_in, style: str, texts: list[str]):
    """A byte-level BPE tokenizer with another pre-tokenizer, trained on these texts inside
    the prompts (the stand-in's own tokenizer for "gpt2")."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "gpt2":
        return stand_in
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERNS[style]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = list(stand_in.all_special_tokens)
    tok.train_from_iterator(
        [prompts.wrap(f, prompts.user_text(texts[i:i + 3])) for f in prompts.CHAT
         for i in range(len(texts))],
        trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=stand_in.pad_token,
                                   eos_token=stand_in.eos_token,
                                   extra_special_tokens=[t for t in specials if t not in (
                                       stand_in.pad_token, stand_in.eos_token)])


@pytest.mark.parametrize("style", ["gpt2", "qwen2", "trailing"])
@pytest.mark.parametrize("family", ["qwen2-vl", "smolvlm"])
def test_prompt_pieces_equal_whole_prompt_tokenisation(assets, family, style):
    from transformers import AutoTokenizer

    rng = np.random.default_rng(1)
    raw = TRICKY + [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for _ in range(8)]
    tok = _trained(AutoTokenizer.from_pretrained(assets["ckpts"][family]), style, raw)
    name = "qwen" if family.startswith("qwen") else "idefics3"
    special = re.compile("|".join(re.escape(t) for t in tok.all_special_tokens))
    pt = PromptTokens(tok, name, 12, special)
    pt.sync()
    texts = pt.texts(raw)

    def whole(body: str) -> list[int]:
        return tok(prompts.wrap(name, body))["input_ids"]

    for t in texts:
        assert pt.item_text(t) == whole(prompts.item_text(t))
    for n in range(1, 12):  # histories up to 11 lines: multi-digit joiners
        lines = list(itertools.islice(itertools.cycle(texts), 3 * n, 4 * n))
        assert pt.user_text(lines) == whole(prompts.user_text(lines)), lines
        slot = prompts.IMAGE_SLOT[name]
        assert pt.images(n) == whole(prompts.user_image(n, slot))
    assert pt.images(0) == whole(prompts.item_image(prompts.IMAGE_SLOT[name]))
    unsafe = {t for t in texts if pt._line[t] is None}  # these prompts are tokenised whole
    if style == "gpt2":  # the stand-ins' tokenizers: every text assembled from pieces
        assert not unsafe
    if style == "trailing":  # merges across the cuts: the check catches them, prompts fall back
        assert unsafe


def test_template_change_drops_cached_pieces(assets, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["ckpts"]["qwen2-vl"])
    pt = PromptTokens(tok, "qwen", 16, re.compile("<\\|[a-z_]+\\|>"))
    pt.sync()
    before = pt.user_text(pt.texts(["red car", "blue doll"]))
    monkeypatch.setattr(prompts, "USER_TEXT_LINE", "- {text} ({index})")
    pt.sync()
    after = pt.user_text(pt.texts(["red car", "blue doll"]))
    assert after != before
    assert after == tok(prompts.wrap("qwen", prompts.user_text(["red car", "blue doll"])))[
        "input_ids"]


def test_length_buckets_partition_at_least_cost():
    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = rng.integers(1, 60, size=int(rng.integers(1, 9))).tolist()
        overhead = int(rng.choice([0, 5, 40, 10**6]))
        groups = length_buckets(lengths, overhead)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))

        def cost(gs, lengths=lengths, overhead=overhead):
            return sum(overhead + len(g) * max(lengths[i] for i in g) for g in gs)

        # against every split of the length order into runs
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))])
                   for k in range(len(order))
                   for cuts in itertools.combinations(range(1, len(order)), k))
        assert cost(groups) == best
    assert length_buckets([5, 3, 5, 9], 0) == [[1], [0, 2], [3]]
    assert length_buckets([5, 3, 5, 9], 10**6) == [[1, 0, 2, 3]]
    assert length_buckets([], 3) == []
