"""SASRec: RecBole's implementation, plus the original paper's loss at every position.

``calculate_loss`` (RecBole's, unchanged) trains on one target per prefix: the ``prefix`` mode.
``all_positions_loss`` trains each window of a user's sequence once with a loss at every position,
as in Kang & McAuley (2018): the same signal at a fraction of the cost (``all_positions`` mode).
"""

from __future__ import annotations

from benchmark.recbole_compat import import_recbole

import_recbole()

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec


class SASRec(RecBoleSASRec):
    def sequence_output(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Transformer output at every position (B, L, H); right padding, causal attention."""
        position_ids = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.item_embedding(item_seq) + self.position_embedding(position_ids).unsqueeze(0)
        x = self.dropout(self.LayerNorm(x))
        mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]

    def all_positions_loss(self, item_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over all items at every non-padding position (targets 0 are ignored)."""
        out = self.sequence_output(item_seq)
        keep = targets > 0
        logits = out[keep] @ self.item_embedding.weight.T
        return F.cross_entropy(logits, targets[keep])
