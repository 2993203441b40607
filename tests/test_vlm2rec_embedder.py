"""VLM2Rec embedder on tiny random stand-ins (Qwen2-VL, Qwen2.5-VL, SmolVLM, Idefics3, FastVLM)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.vlm2rec import prompts
from methods.vlm2rec.embedder import ItemContent, VLMEmbedder
from methods.vlm2rec.tiny import (
    TINY_MARKER,
    build_tiny_checkpoint,
    paper_config,
    stand_in_kind,
)

WORDS = ["red", "blue", "toy", "car", "doll", "lipstick", "shoe", "running", "beauty"]
WORDS += ["cream", "soft", "large", "small", "kids"]
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """Images (good, corrupt), item texts and one stand-in checkpoint per family, built once."""
    from PIL import Image

    root = tmp_path_factory.mktemp("vlm2rec")
    rng = np.random.default_rng(0)
    images = []
    for i in range(12):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 28, 3), dtype=np.uint8)).save(path)
        images.append(path)
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(12)]
    ckpts = {
        fam: build_tiny_checkpoint(fam, root / fam, texts, seed=1)
        for fam in ("qwen2-vl", "qwen2.5-vl", "smolvlm", "idefics3", "fast-vlm")
    }
    return {"images": images, "corrupt": corrupt, "texts": texts, "ckpts": ckpts, "root": root}


def items_of(assets, n: int = 6) -> list[ItemContent]:
    return [ItemContent(assets["texts"][i], assets["images"][i]) for i in range(n)]


def embedder(assets, family: str = "qwen2-vl", **kw) -> VLMEmbedder:
    kw.setdefault("image_size", 32)
    return VLMEmbedder(assets["ckpts"][family], **kw)


def decoded(emb: VLMEmbedder, rows: list[list[int]]) -> list[str]:
    """The prompts the embedder fed to the model, as text (image tokens unexpanded)."""
    return [emb.tokenizer.decode(ids) for ids in rows]


def wrapped(emb: VLMEmbedder, body: str) -> str:
    return prompts.wrap(emb.family.prompt_family, body)


def unit_or_zero(x: torch.Tensor, present: torch.Tensor) -> None:
    norms = x.norm(dim=-1)
    assert torch.allclose(norms[present], torch.ones(int(present.sum())), atol=TOL)
    assert torch.all(norms[~present] == 0)


# ------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "smolvlm", "idefics3", "fast-vlm"])
def test_tiny_checkpoint_saves_and_loads_through_from_pretrained(assets, family):
    path = assets["ckpts"][family]
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    } <= names
    marker = json.loads((path / TINY_MARKER).read_text())
    assert marker["stand_in"] is True and marker["pretrained"] is False
    # fast-vlm: + the EfficientNet's 1,280-channel top convolution and its projector
    assert 0.05e6 < marker["n_params"] < (0.6e6 if family == "fast-vlm" else 0.35e6)
    emb = embedder(assets, family)
    info = emb.info()
    assert info["stand_in"] is True and "NOT pretrained" in info["stand_in_note"]
    assert info["stand_in_kind"] == "random" == stand_in_kind(path)
    assert emb.dim == 64 and emb.trust_remote_code is False
    # special tokens are single ids (the prompt layout relies on it)
    tok = emb.tokenizer
    for token in prompts.IMAGE_SLOT[emb.family.prompt_family].replace("><", ">\n<").split("\n"):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1


def test_tiny_build_is_deterministic_and_leaves_the_rng_alone(assets, tmp_path):
    state = torch.random.get_rng_state()
    path = build_tiny_checkpoint("qwen2-vl", tmp_path / "again", assets["texts"], seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (path / name).read_bytes() == (assets["ckpts"]["qwen2-vl"] / name).read_bytes()


def test_trust_remote_code_defaults_to_false():
    sig = inspect.signature(VLMEmbedder)
    assert sig.parameters["trust_remote_code"].default is False
    assert set(paper_config()) <= set(sig.parameters)
    assert paper_config()["model"] == "Qwen/Qwen2.5-VL-3B-Instruct"


# ------------------------------------------------------------------------ embeddings


@pytest.mark.parametrize("family", ["qwen2-vl", "smolvlm"])
def test_branches_are_unit_vectors_and_fused_is_their_sum(assets, family):
    emb = embedder(assets, family)
    items = items_of(assets, 5)
    with torch.no_grad():
        b = emb.encode_items(items)
        u = emb.encode_users([items[:3], items[1:5], items[4:5]])
    for br, n in ((b, 5), (u, 3)):
        assert br.text.shape == br.image.shape == br.fused.shape == (n, emb.dim)
        assert br.text_present.all() and br.image_present.all()
        unit_or_zero(br.text, br.text_present)
        unit_or_zero(br.image, br.image_present)
        assert torch.allclose(br.fused, br.text + br.image)
        assert not torch.allclose(br.text, br.image)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "smolvlm", "idefics3", "fast-vlm"])
def test_embedding_does_not_depend_on_the_rest_of_the_batch(assets, family):
    emb = embedder(assets, family, lora={})
    items = items_of(assets, 8)
    short = ItemContent("car", assets["images"][9])
    with torch.no_grad():
        alone = emb.encode_items([items[2]])
        mixed = emb.encode_items([short, items[5], items[2], ItemContent(None, None)])
        u_alone = emb.encode_users([items[:4]])
        u_mixed = emb.encode_users([items[3:4], items[:4], items])
    for a, m in ((alone, mixed), (u_alone, u_mixed)):
        k = 2 if a is alone else 1
        for name in ("text", "image", "fused"):
            assert torch.allclose(getattr(a, name)[0], getattr(m, name)[k], atol=TOL), name


def test_fast_vlm_tower_is_convolutional_and_its_batch_norms_stay_frozen(assets):
    """FastVLM's tower (a small EfficientNet) gives (image / 8)^2 tokens per image; in LoRA
    training mode its frozen batch norms keep their running statistics, so an image's
    features (cached) do not depend on the batch it came in, and the statistics do not move."""
    emb = embedder(assets, "fast-vlm", lora={"r": 4})
    config = json.loads((assets["ckpts"]["fast-vlm"] / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "efficientnet"
    norms = [m for m in emb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(float(m.weight.mean()) == 1.0 for m in norms)  # not N(0, 0.02)
    items = items_of(assets, 6)
    with torch.no_grad():
        ref = emb.encode_items(items[:1]).image
    emb.clear_image_cache()
    stats = [m.running_mean.clone() for m in norms]
    emb.train()
    assert not any(m.training for m in norms)
    assert emb._core.language_model.training
    with torch.no_grad():
        batch = emb.encode_items(items).image
        payload = emb._images([items[0].image])[0]
    assert payload.shape == (4 * 4, emb.dim)  # 32 px / 8 = 4 cells a side
    assert torch.allclose(batch[0], ref[0], atol=TOL)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, norms))


def test_qwen_positions_and_image_features_match_the_model_path(assets):
    """Cached vision features + our M-RoPE positions == the model's own pixel path."""
    from PIL import Image

    emb = embedder(assets, "qwen2-vl")
    fam, core, slot = emb.family, emb._core, prompts.IMAGE_SLOT["qwen"]
    users = [items_of(assets, 4), items_of(assets, 2)]
    pixels = fam.preprocess([Image.open(it.image).convert("RGB") for h in users for it in h])
    grid = torch.stack([g for _, g in pixels])
    counts = iter(int(g.prod()) // fam.merge**2 for g in grid)
    texts = []
    for h in users:
        parts = prompts.wrap("qwen", prompts.user_image(len(h), slot)).split(slot)
        expanded = [
            f"<|vision_start|>{'<|image_pad|>' * next(counts)}<|vision_end|>{p}" for p in parts[1:]
        ]
        texts.append(parts[0] + "".join(expanded))
    enc = emb.tokenizer(texts, padding=True, return_tensors="pt")
    types = (enc["input_ids"] == fam.image_token_id).int()
    with torch.no_grad():
        mine = emb.encode_users(users).image
        ref_pos, _ = core.get_rope_index(
            enc["input_ids"], types, grid, attention_mask=enc["attention_mask"]
        )
        out = core(
            **enc,
            pixel_values=torch.cat([p for p, _ in pixels]),
            image_grid_thw=grid,
            mm_token_type_ids=types,
            use_cache=False,
        )
    assert torch.equal(fam.mrope_positions(types, enc["attention_mask"], grid), ref_pos)
    ref = torch.nn.functional.normalize(out.last_hidden_state[:, -1], dim=-1)
    assert torch.allclose(mine, ref, atol=TOL)


def test_missing_modalities_are_absent_branches_never_blank_inputs(assets, monkeypatch):
    emb = embedder(assets)
    img = assets["images"]
    items = [
        ItemContent("red toy car", None),  # no image
        ItemContent("   ", img[1]),  # blank text
        ItemContent(None, assets["corrupt"]),  # unreadable image, no text -> nothing
        ItemContent("blue doll", assets["root"] / "missing.png"),  # missing file
    ]
    with torch.no_grad():
        b = emb.encode_items(items)
        ref = emb.encode_items([ItemContent("red toy car", None), ItemContent(None, img[1])])
    assert b.text_present.tolist() == [True, False, False, True]
    assert b.image_present.tolist() == [False, True, False, False]
    assert b.fused_present.tolist() == [True, True, False, True]
    unit_or_zero(b.text, b.text_present)
    unit_or_zero(b.image, b.image_present)
    assert torch.equal(b.fused[0], b.text[0]) and torch.equal(b.fused[1], b.image[1])
    assert torch.all(b.fused[2] == 0)
    assert torch.allclose(b.fused[:2], ref.fused, atol=TOL)
    # a branch with no content at all is never run through the model
    calls = []
    real = emb._embed
    monkeypatch.setattr(emb, "_embed", lambda rows, pay: calls.append(rows) or real(rows, pay))
    with torch.no_grad():
        u = emb.encode_users([[items[0], items[3]], [items[2]], []])
    assert len(calls) == 1 and len(calls[0]) == 1
    assert "<|image_pad|>" not in decoded(emb, calls[0])[0]
    assert u.text_present.tolist() == [True, False, False]
    assert not u.image_present.any()
    assert torch.equal(u.fused, u.text)


def test_user_prompt_uses_last_history_len_items_in_order(assets, monkeypatch):
    emb = embedder(assets, history_len=3)
    items = items_of(assets, 8)
    bodies = []
    real = emb._embed
    monkeypatch.setattr(emb, "_embed", lambda b, p: bodies.extend(b) or real(b, p))
    with torch.no_grad():
        full = emb.encode_users([items])
        last = emb.encode_users([items[-3:]])
    assert torch.allclose(full.fused, last.fused, atol=TOL)
    expected = prompts.user_text([emb._texts([it.text])[0] for it in items[-3:]])
    assert decoded(emb, bodies[:2]) == [wrapped(emb, expected),
                                        wrapped(emb, prompts.user_image(3, emb.family.slot))]


def test_texts_are_cleaned_and_truncated(assets):
    emb = embedder(assets, max_text_tokens=4)
    text = "red <|image_pad|> toy\n\ncar <|im_end|> " + " ".join(WORDS * 3)
    cleaned = emb._texts([text])[0]
    assert "<|" not in cleaned and "\n" not in cleaned
    assert len(emb.tokenizer(cleaned, add_special_tokens=False)["input_ids"]) <= 4
    with torch.no_grad():  # special-token text would otherwise add a phantom image slot
        b = emb.encode_items([ItemContent(text, None)])
    assert b.text_present.tolist() == [True]


@pytest.mark.parametrize("family", ["qwen2-vl", "smolvlm"])
def test_internal_fusion_uses_one_joint_prompt(assets, family, monkeypatch):
    emb = embedder(assets, family, fusion="internal")
    img = assets["images"]
    items = [ItemContent("red car", img[0]), ItemContent("doll", None), ItemContent(None, img[2])]
    bodies = []
    real = emb._embed
    monkeypatch.setattr(emb, "_embed", lambda b, p: bodies.append(b) or real(b, p))
    with torch.no_grad():
        b = emb.encode_items(items)
        only = emb.encode_items(items, unimodal=False)
        u = emb.encode_users([items, items[1:2]], unimodal=False)
    slot = emb.family.slot
    joint = [prompts.item_joint("red car", True, slot), prompts.item_joint("doll", False, slot),
             prompts.item_joint(None, True, slot)]
    # one call per encode: text (2), image (2) and joint (3) prompts; then joint only
    assert [len(b) for b in bodies] == [2 + 2 + 3, 3, 2]
    shown = decoded(emb, bodies[0][4:])
    assert shown == decoded(emb, bodies[1]) == [wrapped(emb, j) for j in joint]
    unit_or_zero(b.fused, torch.ones(3, dtype=torch.bool))
    assert torch.allclose(b.fused, only.fused, atol=TOL)
    assert not only.text_present.any() and not only.image_present.any()
    assert b.text_present.tolist() == [True, True, False]
    assert slot not in shown[1] and "Item:" not in shown[2]  # only present modalities
    for other in (b.text[0], b.image[0]):  # the joint embedding is neither unimodal one
        assert not torch.allclose(b.fused[0], other, atol=1e-3)
    unit_or_zero(u.fused, torch.ones(2, dtype=torch.bool))


# ------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize("family", ["qwen2-vl", "smolvlm", "fast-vlm"])
def test_only_language_model_lora_parameters_train_and_get_gradients(assets, family):
    emb = embedder(assets, family, lora={"r": 4}, gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in emb.modules())
    names = {n for n, p in emb.named_parameters() if p.requires_grad}
    params = emb.trainable_parameters()
    assert names and len(params) == len(names)
    assert all("lora_" in n for n in names)
    lm = "text_model" if family == "smolvlm" else "language_model"
    assert all(f".{lm}." in n for n in names)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{proj}.lora_A" in n for n in names), proj
    emb.train()
    items = items_of(assets, 4)
    u, v = emb.encode_users([items[:3], items[1:4]]), emb.encode_items(items[2:4])
    loss = -(u.fused * v.fused).sum() + (u.image * v.text).sum()
    loss.backward()
    grads = {n: p.grad for n, p in emb.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert all(p.grad is None for p in emb.parameters() if not p.requires_grad)


def test_frozen_without_lora(assets):
    emb = embedder(assets, lora=None)
    assert emb.trainable_parameters() == []
    with pytest.raises(RuntimeError):
        emb.save_adapter(assets["root"] / "nope")


def test_adapter_round_trip(assets, tmp_path):
    items = items_of(assets, 4)
    a = embedder(assets, lora={"r": 8})
    with torch.no_grad():
        for p in a.trainable_parameters():
            p.normal_(0, 0.2)
        ref = a.encode_items(items)
    out = a.save_adapter(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    b = embedder(assets, lora={"r": 8})
    with torch.no_grad():
        before = b.encode_items(items)
        b.load_adapter(out)
        after = b.encode_items(items)
    assert not torch.allclose(before.fused, ref.fused, atol=1e-3)
    assert torch.allclose(after.fused, ref.fused, atol=TOL)
    with pytest.raises(ValueError):
        embedder(assets, lora={"r": 4}).load_adapter(out)


# ------------------------------------------------------------------------ prompts


def test_prompt_templates_live_in_prompts_module_only():
    src = (Path(__file__).resolve().parents[1] / "methods/vlm2rec/embedder.py").read_text()
    for literal in ("Summarize", "<|im_start|>", "USER:", "Assistant:", "one word"):
        assert literal not in src, literal
    for family, wrapper in prompts.CHAT.items():
        assert "{body}" in wrapper and family in prompts.IMAGE_SLOT
    assert prompts.item_text("x").endswith(prompts.ITEM_INSTRUCTION)
    assert prompts.user_image(2, "<image>").count("<image>") == 2


def test_prompts_module_drives_the_embedder(assets, monkeypatch):
    emb = embedder(assets)
    items = items_of(assets, 2)
    with torch.no_grad():
        ref = emb.encode_items(items).text
        monkeypatch.setattr(prompts, "ITEM_TEXT", "Product: {text}\nOne word:")
        changed = emb.encode_items(items).text
    assert not torch.allclose(ref, changed, atol=1e-3)
