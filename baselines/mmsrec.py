"""MMSRec (Song et al., 2023, arXiv 2304.13277): self-supervised multimodal sequential recommendation.

Dual-tower retrieval with one fusion encoder (official code: kz-song/MMSRec, ``model/fusion.py``):

- every item is two modality tokens, its frozen image and text features each projected to the
  fusion size (linear + LayerNorm); a sequence of items is the sequence of their tokens, plus a
  position embedding (per item) and a modality-type embedding (per token);
- a missing modality is a token masked out of attention, never a zero vector; an item with no
  modality at all is one learned placeholder token; a masked item is the learned mask token;
- a bidirectional transformer runs over the tokens; each modality's output goes through its own
  linear + LayerNorm and an item's output is the max over its present tokens;
- user tower: the sequence with a mask token appended, read at the mask; item tower: the same
  encoder run on the item alone. Scores are cosine similarities divided by ``temperature``.

Fine-tuning (``calculate_loss``; the official training set is every prefix of every sequence,
so the model trains in ``prefix`` mode only: a bidirectional encoder that reads a masked last item
cannot score every position of a window in one pass): masked-item prediction, the last item always
masked plus a ``mask_ratio`` share of the others (BERT-style 80/10/10), CE against every item's
item-tower embedding (only the training split's items under ``train_candidates: seen``, the
harness default; ``all`` is the official loss; see :mod:`baselines.candidates`).
Pre-training (``pretrain_loss``): the combinatorial contrastive loss between views of the same
sequence (vision vs vision under two dropout draws, vision vs text, text vs text, vision+text vs
vision+text; position-wise, in-batch negatives) plus ``pretrain_mip_weight`` x masked-item
prediction. See docs/baselines/mmsrec.md for what differs from the official code and why.
"""

from __future__ import annotations

from functools import partial

from benchmark.recbole_compat import import_recbole

import_recbole()

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn

from baselines.candidates import TrainCandidates
from baselines.content import init_like_sasrec, lookup, register_features
from benchmark.contract import Capabilities

MODALITIES = ("image", "text")
# Which modalities each pre-training view lets the encoder see (image, text).
VIEWS = {"v": (True, False), "t": (False, True), "vt": (True, True)}
# The combinatorial pairs: (view, draw) against (view, draw).
PAIRS = ((("v", 0), ("v", 1)), (("v", 0), ("t", 0)), (("t", 0), ("t", 1)),
         (("vt", 0), ("vt", 1)))
ITEM_CHUNK = 4096  # items encoded per item-tower batch


def _linear_norm(n_in: int, n_out: int, eps: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out, eps=eps))


def _windows(item_seq: torch.Tensor, lengths: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Right-padded (B, L) histories + their next items -> (B, L + 1) item windows."""
    window = F.pad(item_seq, (0, 1))
    return window.scatter(1, lengths.unsqueeze(1), last.unsqueeze(1))


class MMSRec(SequentialRecommender, TrainCandidates):
    """MMSRec's fusion encoder as user and item tower over frozen image and text features."""

    input_type = InputType.POINTWISE

    HARNESS = Capabilities(pretrain=True, train_split=True, item_table=True)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._item_cache: torch.Tensor | None = None
        h, eps = config["hidden_size"], config["layer_norm_eps"]
        self.hidden_size = h
        self.temperature = config["temperature"]
        self.mask_ratio = config["mask_ratio"]
        self.pretrain_mip_weight = config["pretrain_mip_weight"]
        self.pretrain_max_tokens = config["pretrain_max_tokens"]
        self.initializer_range = config["initializer_range"]

        dims = [register_features(self, dataset, m, self.n_items) for m in MODALITIES]
        self.input_proj = nn.ModuleList(_linear_norm(d, h, eps) for d in dims)
        self.mask_token = nn.Parameter(torch.zeros(h))
        self.empty_token = nn.Parameter(torch.zeros(h))  # an item with no content at all
        # one position per item of a window: the history (max_seq_length) + the predicted item
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, h)
        self.type_embedding = nn.Embedding(len(MODALITIES), h)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)
        self.dropout = nn.Dropout(config["embedding_dropout_prob"])
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=h,
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=eps)
        self.output_proj = nn.ModuleList(_linear_norm(h, h, eps) for _ in MODALITIES)
        self.apply(partial(init_like_sasrec, std=self.initializer_range))
        nn.init.normal_(self.mask_token, std=self.initializer_range)
        nn.init.normal_(self.empty_token, std=self.initializer_range)
        self.init_train_candidates(config)


    # -- the fusion encoder -------------------------------------------------------------------
    def encode(self, items: torch.Tensor, masked: torch.Tensor,
               visible: tuple[bool, bool] = (True, True)) -> torch.Tensor:
        """Fusion encoder over right-padded item windows (B, T) -> one output per item (B, T, H).

        ``masked`` (B, T) marks positions shown as the mask token (their ids are ignored);
        ``visible`` hides a modality from every item (pre-training views). Items with none of the
        visible modalities are the placeholder token. Outputs at padding positions are junk.
        """
        valid = (items > 0) | masked
        tokens, present = [], []
        for modality, proj, see in zip(MODALITIES, self.input_proj, visible):
            values, has = lookup(self, modality, items)
            tokens.append(proj(values))
            present.append(has & see)
        x = torch.stack(tokens, dim=2)  # (B, T, M, H)
        present = torch.stack(present, dim=2)  # (B, T, M)
        special = masked | (valid & ~present.any(-1))
        fill = torch.where(masked.unsqueeze(-1), self.mask_token, self.empty_token)
        x = torch.where(special[..., None, None], fill.unsqueeze(2), x)
        present = present | special.unsqueeze(-1)

        # Positions count back from the window's last item (the predicted one is 0).
        n, t = items.shape
        steps = torch.arange(t, device=items.device)
        positions = (valid.sum(1, keepdim=True) - 1 - steps).clamp(min=0)
        x = x + self.position_embedding(positions).unsqueeze(2) + self.type_embedding.weight
        x = self.dropout(self.LayerNorm(x))
        m = len(MODALITIES)
        keys = present.reshape(n, 1, 1, t * m)
        attention = torch.where(keys, 0.0, -10000.0)  # key padding only: bidirectional
        out = self.trm_encoder(x.reshape(n, t * m, -1), attention,
                               output_all_encoded_layers=False)[-1].reshape(n, t, m, -1)
        out = torch.stack([proj(out[:, :, k]) for k, proj in enumerate(self.output_proj)], dim=2)
        return out.masked_fill(~present.unsqueeze(-1), -1.0e4).amax(dim=2)

    def item_table(self) -> torch.Tensor:
        """Item-tower embedding of every item (n_items, H), each item encoded alone; row 0 zeros.
        Cached in eval mode outside autograd; ``train()``/``eval()``, loading weights and moving
        the model drop the cache."""
        if self._item_cache is not None:
            return self._item_cache
        ids = torch.arange(1, self.n_items, device=self.position_embedding.weight.device)
        rows = [self.encode(c.unsqueeze(1), torch.zeros_like(c.unsqueeze(1), dtype=torch.bool))
                [:, 0] for c in ids.split(ITEM_CHUNK)]
        table = torch.cat([rows[0].new_zeros(1, self.hidden_size), *rows])
        if not self.training and not torch.is_grad_enabled():
            self._item_cache = table
        return table

    def train(self, mode: bool = True):
        self._item_cache = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._item_cache = None
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):  # .to(), .cuda(), .half(), ...
        self._item_cache = None
        return super()._apply(*args, **kwargs)

    def _logits(self, user: torch.Tensor) -> torch.Tensor:
        """Cosine similarity / temperature between user vectors (N, H) and every item (N, n_items)."""
        items = F.normalize(self.item_table(), dim=-1)
        return F.normalize(user, dim=-1) @ items.T / self.temperature

    # -- RecBole interface --------------------------------------------------------------------
    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """User-tower embedding (B, H): the history with a mask token appended, read there."""
        window = F.pad(item_seq, (0, 1))
        at = item_seq_len.unsqueeze(1)
        masked = torch.zeros_like(window, dtype=torch.bool).scatter(1, at, True)
        out = self.encode(window, masked)
        return out.gather(1, at.unsqueeze(-1).expand(-1, -1, out.shape[-1])).squeeze(1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self._logits(self.forward(interaction[self.ITEM_SEQ],
                                         interaction[self.ITEM_SEQ_LEN]))

    def predict(self, interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        """Masked-item prediction on each (history, next item) window: the official fine-tuning,
        whose training set is every prefix of every user's sequence (``train_mode: prefix``)."""
        window = _windows(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                          interaction[self.POS_ITEM_ID])
        return self.masked_item_loss(window)

    def pretrain_loss(self, item_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Combinatorial contrastive loss (+ weighted masked-item prediction) on each window."""
        window = self._targets_window(item_seq, targets)
        loss = self.combinatorial_loss(window)
        if self.pretrain_mip_weight > 0:
            loss = loss + self.pretrain_mip_weight * self.masked_item_loss(window)
        return loss

    @staticmethod
    def _targets_window(item_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lengths = (item_seq > 0).sum(1)
        last = targets.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return _windows(item_seq, lengths, last)

    # -- losses ---------------------------------------------------------------------------------
    def masked_item_loss(self, window: torch.Tensor) -> torch.Tensor:
        """Mask each window's last item and a ``mask_ratio`` share of the others (of those: 80%
        mask token, 10% a random item, 10% unchanged); CE of the masked items over the training
        candidates (all items, or the training split's under ``seen``)."""
        valid = window > 0
        last = F.one_hot(valid.sum(1) - 1, window.shape[1]).bool()
        chosen = (torch.rand(window.shape, device=window.device) < self.mask_ratio) & valid | last
        draw = torch.rand(window.shape, device=window.device)
        replace = chosen & ~last & (draw < 0.1)
        keep = chosen & ~last & (draw >= 0.1) & (draw < 0.2)
        inputs = torch.where(replace, torch.randint_like(window, 1, self.n_items), window)
        out = self.encode(inputs, chosen & ~replace & ~keep)
        logits = self.candidate_logits(self._logits(out[chosen]))
        return F.cross_entropy(logits[:, 1:], window[chosen] - 1)

    def combinatorial_loss(self, window: torch.Tensor) -> torch.Tensor:
        """Position-wise contrast between views of the same windows: v-v (two dropout draws),
        v-t, t-t, vt-vt; each a symmetric InfoNCE over the batch's items, averaged."""
        valid = window > 0
        flat = valid.flatten().nonzero().squeeze(1)
        if len(flat) > self.pretrain_max_tokens:  # bound the (tokens x tokens) similarity
            keep = torch.randperm(len(flat), device=window.device)[:self.pretrain_max_tokens]
            flat = flat[keep]
        no_mask = torch.zeros_like(valid)
        has = [lookup(self, m, window)[1].flatten()[flat] for m in MODALITIES]
        outputs, usable = {}, {}
        for view, draw in dict.fromkeys(v for pair in PAIRS for v in pair):
            see = VIEWS[view]
            outputs[view, draw] = self.encode(window, no_mask, see).flatten(0, 1)[flat]
            usable[view, draw] = (has[0] & see[0]) | (has[1] & see[1])
        losses = [self._info_nce(outputs[a], usable[a], outputs[b], usable[b]) for a, b in PAIRS]
        return torch.stack(losses).mean()

    def _info_nce(self, a: torch.Tensor, a_ok: torch.Tensor, b: torch.Tensor,
                  b_ok: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE (cosine / temperature), positives on the diagonal; rows and columns
        whose item lacks the view's modality are left out."""
        sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / self.temperature
        sim = sim.masked_fill(~(a_ok.unsqueeze(1) & b_ok.unsqueeze(0)), -1.0e4)
        both = a_ok & b_ok
        if not both.any():
            return sim.sum() * 0.0
        rows = sim.log_softmax(dim=1).diagonal()[both].mean()
        cols = sim.log_softmax(dim=0).diagonal()[both].mean()
        return -(rows + cols)
