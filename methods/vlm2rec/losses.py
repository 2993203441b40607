"""The VLM2Rec training objective (docs/vlm2rec.md §2-§5), one small function per term.

All scores are cosine similarities. Rows of a batch are (user history, next item) pairs: row u's
positive is column u, the other columns are in-batch negatives, and a column whose item equals
row u's target (``target_ids``) is a false negative and is masked out. A modality that is absent
for a row (``present`` False) removes that row from the modality's terms: as an anchor when the
user's or its target's branch is absent, as a candidate when the item's branch is absent.

- :func:`info_nce`: L_CL, in-batch InfoNCE;
- :func:`wpcl`: Weak-modality Penalized Contrastive Learning, with its diagnostics;
- :func:`crtr`: Cross-Modal Relational Topology Regularization (bidirectional KL);
- :class:`Objective`: ``L = L_CL + lambda_w * L_WPCL + lambda_r * L_CRTR``, terms switchable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODALITIES = ("text", "image")


def _all(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool, device=like.device)


def masked_logits(h: torch.Tensor, e: torch.Tensor, tau: float,
                  target_ids: torch.Tensor | None = None,
                  candidate_present: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B) logits ``cos(h_u, e_j) / tau``; false negatives and absent candidates are -inf
    (the diagonal, each row's positive, is never masked)."""
    logits = F.normalize(h.float(), dim=-1) @ F.normalize(e.float(), dim=-1).T / tau
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    drop = torch.zeros_like(eye)
    if target_ids is not None:
        drop |= target_ids.view(-1, 1) == target_ids.view(1, -1)
    if candidate_present is not None:
        drop |= ~candidate_present.view(1, -1)
    return logits.masked_fill(drop & ~eye, -torch.inf)


def _nll(logits: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log softmax(logits)[u, u]`` over the anchor rows (0 when there is none)."""
    if not anchors.any():
        return logits.new_zeros(())
    rows = anchors.nonzero().squeeze(1)
    return F.cross_entropy(logits[rows], rows)


def info_nce(h: torch.Tensor, e: torch.Tensor, tau: float, target_ids: torch.Tensor | None = None,
             anchor_present: torch.Tensor | None = None,
             candidate_present: torch.Tensor | None = None) -> torch.Tensor:
    """L_CL: ``-1/|B| sum_u log(exp(s(h_u, e_u)/tau) / sum_j exp(s(h_u, e_j)/tau))``.

    ``h``, ``e``: (B, d) user and target-item embeddings; ``target_ids`` (B,) masks false
    negatives; ``anchor_present`` / ``candidate_present`` (B,) drop absent rows / columns.
    """
    anchors = _all(len(h), h) if anchor_present is None else anchor_present
    logits = masked_logits(h, e, tau, target_ids, candidate_present)
    return _nll(logits, anchors)


@dataclass
class WPCLStats:
    """Modality-collapse diagnostics of one batch (docs/vlm2rec.md §3).

    ``p_text`` / ``p_image``: mean probability each modality alone puts on the positive;
    ``weak``: the modality with the lower p; ``rho = p_strong / p_weak >= 1``;
    ``beta = 1 + gamma * tanh(alpha * (rho - 1))``. NaN / None when a modality has no anchor.
    """

    p_text: float
    p_image: float
    rho: float
    weak: str | None
    beta: float

    def as_dict(self) -> dict:
        return {"p_text": self.p_text, "p_image": self.p_image, "rho": self.rho,
                "weak": self.weak, "beta": self.beta}


def wpcl(h_t: torch.Tensor, e_t: torch.Tensor, h_v: torch.Tensor, e_v: torch.Tensor,
         h_t_present: torch.Tensor, e_t_present: torch.Tensor,
         h_v_present: torch.Tensor, e_v_present: torch.Tensor,
         tau: float, gamma: float = 1.0, alpha: float = 1.0,
         target_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, WPCLStats]:
    """L_WPCL and its diagnostics.

    1. ``p^m = mean_u softmax_j(s^m(u, j)/tau)[u+]`` per modality, under stop-gradient, on the
       *common* rows and columns: anchors with both modalities present (user and target, text
       and image) ranked against candidates with both branches present;
    2. weak modality ``w = argmin_m p^m`` (ties: image), ``rho = p^strong / p^weak``;
    3. ``beta = 1 + gamma * tanh(alpha * (rho - 1))``;
    4. unimodal InfoNCE of the weak modality with ``log(beta)`` added to its negative logits,
       over that modality's own anchors and candidates (every row where it is present).

    Why the common set in step 1: a probability is relative to its candidate set. With half the
    images missing, the image softmax runs over half the columns, so two modalities both at
    chance would give ``p^v = 2 p^t``, rho ~ 2, and the penalty would land on text for no
    reason. On the common set the chance levels are equal and rho compares skill only.

    When no row has all four branches with a common candidate (nothing to compare), the loss
    is 0 and rho, weak and beta are NaN / None.
    """
    logits, anchors, p = {}, {}, {}
    both_rows = h_t_present & e_t_present & h_v_present & e_v_present
    both_cols = e_t_present & e_v_present
    for m, h, e, hp, ep in (("text", h_t, e_t, h_t_present, e_t_present),
                            ("image", h_v, e_v, h_v_present, e_v_present)):
        anchors[m] = hp & ep
        logits[m] = masked_logits(h, e, tau, target_ids, ep)
        if both_rows.any():
            with torch.no_grad():
                rows = both_rows.nonzero().squeeze(1)
                common = logits[m][rows].masked_fill(~both_cols.view(1, -1), -torch.inf)
                p[m] = float(common.softmax(-1)[torch.arange(len(rows)), rows].mean())
    if len(p) < 2:
        nan = math.nan
        return h_t.new_zeros((), dtype=torch.float32), WPCLStats(nan, nan, nan, None, nan)
    weak = "text" if p["text"] < p["image"] else "image"
    strong = "image" if weak == "text" else "text"
    rho = p[strong] / max(p[weak], 1e-12)
    beta = 1.0 + gamma * math.tanh(alpha * (rho - 1.0))
    lw = logits[weak]
    eye = torch.eye(len(lw), dtype=torch.bool, device=lw.device)
    penalised = torch.where(eye, lw, lw + math.log(beta))  # -inf stays -inf
    return _nll(penalised, anchors[weak]), WPCLStats(p["text"], p["image"], rho, weak, beta)


def crtr(z_t: torch.Tensor, z_v: torch.Tensor, tau_r: float,
         present: torch.Tensor | None = None) -> torch.Tensor:
    """L_CRTR over a set of entities (users' or items' embeddings), bidirectional KL.

    ``P^m_a(b) = softmax_{b != a}(cos(z^m_a, z^m_b) / tau_r)`` and
    ``L = 1/|Z| sum_a 1/2 (KL(P^t_a || P^v_a) + KL(P^v_a || P^t_a))``, over the entities with
    both modalities present (``present``); 0 when fewer than three remain (with two, each
    relational distribution is a single point).
    """
    if present is not None:
        z_t, z_v = z_t[present], z_v[present]
    n = len(z_t)
    if n < 3:
        return z_t.new_zeros((), dtype=torch.float32)
    off = ~torch.eye(n, dtype=torch.bool, device=z_t.device)

    def log_relational(z: torch.Tensor) -> torch.Tensor:
        z = F.normalize(z.float(), dim=-1)
        sim = (z @ z.T / tau_r)[off].view(n, n - 1)  # each row without its diagonal
        return sim.log_softmax(-1)

    log_pt, log_pv = log_relational(z_t), log_relational(z_v)
    kl_tv = (log_pt.exp() * (log_pt - log_pv)).sum(-1)
    kl_vt = (log_pv.exp() * (log_pv - log_pt)).sum(-1)
    return (0.5 * (kl_tv + kl_vt)).mean()


def _fused_present(b) -> torch.Tensor:
    present = getattr(b, "fused_present", None)
    return b.text_present | b.image_present if present is None else present


@dataclass
class Objective:
    """``L = L_CL + lambda_w * L_WPCL + lambda_r * L_CRTR`` (docs/vlm2rec.md §5).

    ``use_wpcl`` / ``use_crtr`` switch the terms (the ablations); the WPCL diagnostics are
    computed in every configuration, plain SFT included (they are collapse diagnostics).
    L_CRTR is the sum of the users' and the items' terms.
    """

    tau: float = 0.05
    lambda_w: float = 1.0
    lambda_r: float = 0.1
    gamma: float = 1.0
    alpha: float = 1.0
    tau_r: float = 0.1
    use_wpcl: bool = True
    use_crtr: bool = True

    def __call__(self, user, item, target_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``user``, ``item``: the embedder's Branches of the B histories and their B targets.
        Returns the loss and a dict of floats: every term, and the WPCL diagnostics."""
        fused_u, fused_i = _fused_present(user), _fused_present(item)
        l_cl = info_nce(user.fused, item.fused, self.tau, target_ids, fused_u & fused_i, fused_i)
        l_w, stats = wpcl(user.text, item.text, user.image, item.image,
                          user.text_present, item.text_present,
                          user.image_present, item.image_present,
                          self.tau, self.gamma, self.alpha, target_ids)
        loss = l_cl
        if self.use_wpcl:
            loss = loss + self.lambda_w * l_w
        l_r = None
        if self.use_crtr:
            l_r = (crtr(user.text, user.image, self.tau_r, user.text_present & user.image_present)
                   + crtr(item.text, item.image, self.tau_r,
                          item.text_present & item.image_present))
            loss = loss + self.lambda_r * l_r
        terms = {"loss": float(loss.detach()), "l_cl": float(l_cl.detach()),
                 "l_wpcl": float(l_w.detach()) if self.use_wpcl else math.nan,
                 "l_crtr": float(l_r.detach()) if l_r is not None else math.nan,
                 **stats.as_dict()}
        return loss, terms
