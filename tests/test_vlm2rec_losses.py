"""VLM2Rec's loss terms on hand-computed tensors (docs/vlm2rec.md §2-§5)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from methods.vlm2rec.losses import Objective, crtr, info_nce, wpcl

TAU = 0.5


def _unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _nll_by_hand(sims: list[list[float]], keep=None) -> float:
    """-mean_u log(exp(s_uu/tau) / sum_j exp(s_uj/tau)) over the columns ``keep[u]``."""
    total = 0.0
    for u, row in enumerate(sims):
        cols = keep[u] if keep else range(len(row))
        total -= row[u] / TAU - math.log(sum(math.exp(row[j] / TAU) for j in cols))
    return total / len(sims)


def test_info_nce_by_hand_2x2():
    h = _unit([1.0, 0.0], [0.0, 1.0])
    e = _unit([1.0, 0.0], [1.0, 1.0])
    c = 1 / math.sqrt(2)
    sims = [[1.0, c], [0.0, c]]  # cos(h_u, e_j)
    assert info_nce(h, e, TAU).item() == pytest.approx(_nll_by_hand(sims), rel=1e-6)


def test_info_nce_masks_false_negatives():
    h = _unit([1.0, 0.2], [0.3, 1.0], [1.0, 1.0])
    e = _unit([1.0, 0.0], [0.9, 0.1], [0.0, 1.0])
    sims = (h @ e.T).tolist()
    targets = torch.tensor([5, 5, 7])  # rows 0 and 1 share their target item
    keep = [[0, 2], [1, 2], [0, 1, 2]]
    got = info_nce(h, e, TAU, targets).item()
    assert got == pytest.approx(_nll_by_hand(sims, keep), rel=1e-6)
    assert got != pytest.approx(info_nce(h, e, TAU).item(), rel=1e-3)


def test_info_nce_drops_absent_rows_and_columns():
    g = torch.Generator().manual_seed(0)
    h, e = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    present = torch.tensor([True, False, True, True])
    sub = info_nce(h[present], e[present], TAU)
    assert info_nce(h, e, TAU, anchor_present=present,
                    candidate_present=present).item() == pytest.approx(sub.item(), rel=1e-6)


def _imbalanced(seed: int = 0, n: int = 6, d: int = 8):
    """Text aligned with the targets, image nearly random: the image is the weak modality."""
    g = torch.Generator().manual_seed(seed)
    e_t = torch.randn(n, d, generator=g)
    h_t = e_t + 0.1 * torch.randn(n, d, generator=g)
    e_v = torch.randn(n, d, generator=g)
    h_v = 0.2 * e_v + torch.randn(n, d, generator=g)
    return h_t, e_t, h_v, e_v


def _all(n: int = 6) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


def test_wpcl_diagnostics_weak_modality_and_beta():
    h_t, e_t, h_v, e_v = _imbalanced()
    _, stats = wpcl(h_t, e_t, h_v, e_v, _all(), _all(), _all(), _all(), TAU, gamma=1.5, alpha=0.7)
    p_t = torch.softmax(F.normalize(h_t, dim=-1) @ F.normalize(e_t, dim=-1).T / TAU, -1)
    p_v = torch.softmax(F.normalize(h_v, dim=-1) @ F.normalize(e_v, dim=-1).T / TAU, -1)
    assert stats.p_text == pytest.approx(p_t.diag().mean().item(), rel=1e-5)
    assert stats.p_image == pytest.approx(p_v.diag().mean().item(), rel=1e-5)
    assert stats.weak == "image" and stats.p_image < stats.p_text
    assert stats.rho >= 1 and stats.rho == pytest.approx(stats.p_text / stats.p_image)
    assert stats.beta == pytest.approx(1 + 1.5 * math.tanh(0.7 * (stats.rho - 1)))
    # swapping the modalities swaps the roles
    _, swapped = wpcl(h_v, e_v, h_t, e_t, _all(), _all(), _all(), _all(), TAU)
    assert swapped.weak == "text" and swapped.rho == pytest.approx(stats.rho)


def test_wpcl_with_beta_one_is_plain_unimodal_info_nce():
    h_t, e_t, h_v, e_v = _imbalanced(1)
    targets = torch.tensor([1, 2, 3, 1, 4, 5])
    loss, stats = wpcl(h_t, e_t, h_v, e_v, _all(), _all(), _all(), _all(), TAU, gamma=0.0,
                       target_ids=targets)
    assert stats.beta == 1.0
    assert loss.item() == pytest.approx(info_nce(h_v, e_v, TAU, targets).item(), rel=1e-6)
    # identical modalities: rho = 1, beta = 1 whatever gamma is
    loss, stats = wpcl(h_t, e_t, h_t, e_t, _all(), _all(), _all(), _all(), TAU, gamma=2.0)
    assert stats.rho == pytest.approx(1.0) and stats.beta == pytest.approx(1.0)
    assert loss.item() == pytest.approx(info_nce(h_t, e_t, TAU).item(), rel=1e-6)


def test_wpcl_penalty_is_log_beta_on_negative_logits():
    h_t, e_t, h_v, e_v = _imbalanced(2)
    loss, stats = wpcl(h_t, e_t, h_v, e_v, _all(), _all(), _all(), _all(), TAU, gamma=1.0)
    sims = F.normalize(h_v, dim=-1) @ F.normalize(e_v, dim=-1).T / TAU
    pos = sims.diag().exp()
    neg = sims.exp().sum(1) - pos
    by_hand = -(pos / (pos + stats.beta * neg)).log().mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_wpcl_without_a_modality_is_zero_with_nan_diagnostics():
    h_t, e_t, h_v, e_v = _imbalanced()
    none = torch.zeros(6, dtype=torch.bool)
    loss, stats = wpcl(h_t, e_t, h_v, e_v, _all(), _all(), none, _all(), TAU)
    assert loss.item() == 0.0 and stats.weak is None and math.isnan(stats.rho)


def test_wpcl_both_at_chance_with_half_the_images_missing_is_balanced():
    # every user and item embedding identical within a modality: each modality alone is at
    # chance. Half the items (and their users) lack an image. On its own candidates the text
    # softmax is 1/6 per column and the image softmax 1/3: the old estimate gave rho = 2,
    # beta = 1 + tanh(1) = 1.76 and called text weak. On the common rows and columns (three
    # of each) both are 1/3 exactly.
    n, d = 6, 4
    same = torch.ones(n, d)
    half = torch.tensor([True, False, True, False, True, False])
    loss, stats = wpcl(same, same, same, same, _all(n), _all(n), half, half, TAU)
    assert stats.p_text == pytest.approx(1 / 3, abs=1e-6)
    assert stats.p_image == pytest.approx(1 / 3, abs=1e-6)
    assert stats.rho == pytest.approx(1.0, abs=1e-6) and stats.beta == pytest.approx(1.0, abs=1e-6)
    # the weak modality (a tie: image) keeps its own anchors and candidates, unpenalised
    assert stats.weak == "image"
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)


def test_wpcl_strength_uses_rows_with_every_branch_and_common_candidates():
    h_t, e_t, h_v, e_v = _imbalanced(4)
    user_img = torch.tensor([True, True, False, True, True, True])
    item_img = torch.tensor([True, True, True, True, False, True])
    _, stats = wpcl(h_t, e_t, h_v, e_v, _all(), _all(), user_img, item_img, TAU)
    rows, cols = [0, 1, 3, 5], [0, 1, 2, 3, 5]  # rows: all four branches; cols: both items' ones

    def p_common(h, e):
        s = F.normalize(h, dim=-1) @ F.normalize(e, dim=-1).T / TAU
        sub = s[rows][:, cols].softmax(-1)
        return float(torch.stack([sub[k, cols.index(r)] for k, r in enumerate(rows)]).mean())

    assert stats.p_text == pytest.approx(p_common(h_t, e_t), rel=1e-5)
    assert stats.p_image == pytest.approx(p_common(h_v, e_v), rel=1e-5)
    assert stats.rho == pytest.approx(stats.p_text / stats.p_image, rel=1e-6)


def test_crtr_zero_for_identical_modalities_symmetric_positive_otherwise():
    g = torch.Generator().manual_seed(3)
    z_t, z_v = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert crtr(z_t, z_t.clone(), 0.1).item() == pytest.approx(0.0, abs=1e-6)
    assert crtr(z_t, 3 * z_t, 0.1).item() == pytest.approx(0.0, abs=1e-6)  # cosine: scale-free
    a, b = crtr(z_t, z_v, 0.1).item(), crtr(z_v, z_t, 0.1).item()
    assert a > 0 and a == pytest.approx(b, rel=1e-6)


def test_crtr_by_hand_and_absent_entities():
    z_t = _unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    z_v = _unit([1.0, 0.0], [1.0, 0.2], [0.0, 1.0])

    def rel(z, a):
        s = [(z[a] @ z[b]).item() / 0.1 for b in range(3) if b != a]
        m = [math.exp(x) for x in s]
        return [x / sum(m) for x in m]

    by_hand = 0.0
    for a in range(3):
        p, q = rel(z_t, a), rel(z_v, a)
        kl = sum(x * math.log(x / y) for x, y in zip(p, q))
        lk = sum(y * math.log(y / x) for x, y in zip(p, q))
        by_hand += 0.5 * (kl + lk) / 3
    assert crtr(z_t, z_v, 0.1).item() == pytest.approx(by_hand, rel=1e-5)
    extra_t = torch.cat([z_t, torch.randn(2, 2)])
    extra_v = torch.cat([z_v, torch.randn(2, 2)])
    present = torch.tensor([True, True, True, False, False])
    assert crtr(extra_t, extra_v, 0.1, present).item() == pytest.approx(by_hand, rel=1e-5)


def _grads(with_wpcl: bool, gamma: float = 1.0):
    h_t, e_t, h_v, e_v = (x.requires_grad_() for x in _imbalanced(4))
    loss = info_nce(h_t + h_v, e_t + e_v, TAU)  # plain SFT on the fused embeddings
    if with_wpcl:
        term, stats = wpcl(h_t, e_t, h_v, e_v, _all(), _all(), _all(), _all(), TAU, gamma=gamma)
        assert stats.weak == "image"
        loss = loss + term
    loss.backward()
    weak = torch.cat([h_v.grad, e_v.grad]).norm().item()
    strong = torch.cat([h_t.grad, e_t.grad]).norm().item()
    return weak, strong


def test_wpcl_raises_the_weak_modality_gradient():
    sft_weak, sft_strong = _grads(False)
    flat_weak, _ = _grads(True, gamma=0.0)  # the weak term without its penalty
    wpcl_weak, wpcl_strong = _grads(True, gamma=1.0)
    assert wpcl_weak > sft_weak
    assert wpcl_weak / wpcl_strong > sft_weak / sft_strong
    assert wpcl_weak > flat_weak  # beta > 1 pushes the weak modality's negatives harder
    assert wpcl_strong == pytest.approx(sft_strong, rel=1e-6)  # the strong branch is untouched


def _branches(h_t, h_v, tp=None, vp=None):
    n = len(h_t)
    tp = _all(n) if tp is None else tp
    vp = _all(n) if vp is None else vp
    t, v = F.normalize(h_t, dim=-1) * tp[:, None], F.normalize(h_v, dim=-1) * vp[:, None]
    return SimpleNamespace(text=t, text_present=tp, image=v, image_present=vp, fused=t + v,
                           fused_present=tp | vp)


@pytest.mark.parametrize("use_wpcl,use_crtr", [(False, False), (True, False), (False, True),
                                               (True, True)])
def test_objective_ablation_flags_switch_the_terms(use_wpcl, use_crtr):
    h_t, e_t, h_v, e_v = _imbalanced(5)
    users, items = _branches(h_t, h_v), _branches(e_t, e_v)
    targets = torch.arange(6)
    obj = Objective(tau=TAU, lambda_w=0.7, lambda_r=0.3, use_wpcl=use_wpcl, use_crtr=use_crtr)
    loss, terms = obj(users, items, targets)
    expected = terms["l_cl"]
    assert math.isnan(terms["l_wpcl"]) != use_wpcl
    assert math.isnan(terms["l_crtr"]) != use_crtr
    if use_wpcl:
        expected += 0.7 * terms["l_wpcl"]
    if use_crtr:
        expected += 0.3 * terms["l_crtr"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for key in ("p_text", "p_image", "rho", "weak", "beta"):  # diagnostics in every ablation
        assert terms[key] is not None
    assert terms["weak"] == "image" and terms["rho"] >= 1


def test_objective_with_missing_images():
    h_t, e_t, h_v, e_v = _imbalanced(6)
    half = torch.tensor([True, False, True, False, True, False])
    users, items = _branches(h_t, h_v, vp=half), _branches(e_t, e_v, vp=half)
    loss, terms = Objective(tau=TAU)(users, items, torch.arange(6))
    assert torch.isfinite(loss) and terms["weak"] in ("text", "image")
    # only the rows with an image take part in the image terms
    sub = info_nce(h_v[half], e_v[half], TAU)
    _, stats = wpcl(h_t, e_t, h_v, e_v, _all(), _all(), half, half, TAU)
    p_v = torch.softmax(F.normalize(h_v[half], dim=-1) @ F.normalize(e_v[half], dim=-1).T / TAU,
                        -1).diag().mean().item()
    assert stats.p_image == pytest.approx(p_v, rel=1e-5) and torch.isfinite(sub)
