"""SASRec: RecBole's implementation, plus the original paper's loss at every position.

``calculate_loss`` (RecBole's, unchanged under ``train_candidates: all``, the default) trains on
one target per prefix: the ``prefix`` mode. ``all_positions_loss`` trains each window of a user's
sequence once with a loss at every position, as in Kang & McAuley (2018): the same signal at a
fraction of the cost (``all_positions`` mode). ``train_candidates: seen`` restricts the training
softmax of both to the items of the training split (:mod:`baselines.candidates`); the content
models built on this class (CLIP-SASRec, VLM2Rec-SASRec) default to it.
"""

from __future__ import annotations

from benchmark.recbole_compat import import_recbole

import_recbole()

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from baselines.candidates import TrainCandidates
from benchmark.contract import Capabilities
from benchmark.errors import ConfigError


class SASRec(RecBoleSASRec, TrainCandidates):
    HARNESS = Capabilities(all_positions=True, train_split=True, item_table=True)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.init_train_candidates(config)
        if self.train_candidates == "seen" and self.loss_type != "CE":
            raise ConfigError(f"train_candidates='seen' restricts a softmax: it needs "
                              f"loss_type CE, got {self.loss_type!r}")

    def calculate_loss(self, interaction) -> torch.Tensor:
        """RecBole's loss (``all``); under ``seen`` its CE over the training items only."""
        if self.train_candidates == "all":
            return super().calculate_loss(interaction)
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = seq_output @ self.item_embedding.weight.T
        return self.loss_fct(self.candidate_logits(logits), interaction[self.POS_ITEM_ID])

    def item_table(self) -> torch.Tensor:
        """The (n_items, hidden) item table it scores with."""
        return self.item_embedding.weight

    def sequence_output(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Transformer output at every position (B, L, H); right padding, causal attention."""
        position_ids = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.item_embedding(item_seq) + self.position_embedding(position_ids).unsqueeze(0)
        x = self.dropout(self.LayerNorm(x))
        mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]

    def all_positions_loss(self, item_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the training candidates (all items by default) at every
        non-padding position (targets 0 are ignored)."""
        out = self.sequence_output(item_seq)
        keep = targets > 0
        logits = out[keep] @ self.item_embedding.weight.T
        return F.cross_entropy(self.candidate_logits(logits), targets[keep])
