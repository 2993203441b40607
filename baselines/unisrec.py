"""UniSRec (Hou et al., KDD 2022): universal item text representations for sequential recommendation.

Frozen item text embeddings (``dataset.item_features["text"]``) pass through a mixture of G
parametric-whitening experts ``PW_k(x) = (x - b_k) W_k`` with a (noisy, in training) softmax gate;
a SASRec-style transformer (RecBole's ``TransformerEncoder``) reads the adapted item embeddings,
and items are scored by ``cosine(sequence, item) / temperature``.

- ``mode="inductive"``: items are their text alone (no ID embedding);
- ``mode="transductive"``: adapted text + an ID embedding, for the sequence input and the scores.

Training: cross-entropy over the item table, on RecBole's prefix samples (``calculate_loss``) or
at every position of a window (``all_positions_loss``); over the items of the training split only
under ``train_candidates: seen`` (the harness default; ``all``: every item, as the official code,
see :mod:`baselines.candidates`). Optional self-supervised pre-training
(``pretrain_loss``, run by the harness for ``pretrain_epochs`` epochs): sequence-item plus
``lambda`` x sequence-sequence contrastive losses with in-batch negatives, the second against an
item-dropped copy of the same sequence. See docs/baselines/unisrec.md for parity notes.
"""

from __future__ import annotations

from functools import partial

from benchmark.recbole_compat import import_recbole

import_recbole()

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from torch import nn

from baselines.candidates import TrainCandidates
from baselines.content import init_like_sasrec, item_id_embedding
from benchmark.contract import Capabilities
from benchmark.errors import ConfigError

MODES = ("inductive", "transductive")


class MoEAdaptor(nn.Module):
    """A softmax-gated mixture of parametric-whitening experts, ``in_dim -> out_dim``.

    Expert k computes ``(dropout(x) - b_k) @ W_k`` (each expert draws its own dropout mask);
    the gate is ``softmax(x @ W_gate + noise)``, with noise ``N(0, softplus(x @ W_noise) + 0.01)``
    in training mode only.
    """

    def __init__(self, in_dim: int, out_dim: int, n_experts: int, dropout: float = 0.0,
                 noisy_gating: bool = True):
        super().__init__()
        self.n_experts = n_experts
        self.noisy_gating = noisy_gating
        self.bias = nn.Parameter(torch.zeros(n_experts, in_dim))
        self.weight = nn.Parameter(torch.empty(n_experts, in_dim, out_dim).normal_(0.0, 0.02))
        self.w_gate = nn.Parameter(torch.zeros(in_dim, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, n_experts))
        self.dropout_prob = dropout

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture weights (..., G), summing to 1."""
        logits = x @ self.w_gate
        if self.noisy_gating and self.training:
            std = F.softplus(x @ self.w_noise) + 1e-2
            logits = logits + torch.randn_like(logits) * std
        return logits.softmax(dim=-1)

    def experts(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's whitened projection (..., G, out_dim).

        Computed as ``dropout_k(x) W_k - b_k W_k`` (the same value): the bias gradient is then a
        cheap sum, and no gradient flows back into the frozen text embeddings.
        """
        flat = x.reshape(1, -1, x.shape[-1])  # (1, N, D), broadcast over the experts
        p = self.dropout_prob
        if self.training and p > 0:
            keep = torch.rand(self.n_experts, *flat.shape[1:], device=x.device) >= p
            out = torch.bmm(torch.where(keep, flat, 0.0), self.weight) / (1 - p)
        else:
            out = torch.matmul(flat, self.weight)  # (G, N, out_dim)
        out = out - torch.bmm(self.bias.unsqueeze(1), self.weight)
        return out.transpose(0, 1).reshape(*x.shape[:-1], self.n_experts, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.gates(x).unsqueeze(-1) * self.experts(x)).sum(dim=-2)


class UniSRec(SequentialRecommender, TrainCandidates):
    """UniSRec on RecBole's ``SequentialRecommender`` interface (see the module docstring)."""

    HARNESS = Capabilities(all_positions=True, pretrain=True, train_split=True,
                           item_table=True)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.mode = config["mode"]
        if self.mode not in MODES:
            raise ConfigError(f"unisrec: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        text = getattr(dataset, "item_features", {}).get("text")
        if text is None:
            raise ConfigError("unisrec needs item text features (dataset.item_features['text'])")
        values = torch.as_tensor(np.asarray(text.values, dtype=np.float32))
        present = torch.as_tensor(np.asarray(text.present, dtype=bool))
        if values.shape[0] != self.n_items or present.shape != (self.n_items,):
            raise ConfigError(f"unisrec: text features have {values.shape[0]} rows, the dataset "
                              f"{self.n_items} item ids")
        missing = ~present
        missing[0] = False  # the padding row stays zeros
        # The frozen text table is rebuilt from the feature cache; kept out of checkpoints.
        self.register_buffer("text_embedding", values, persistent=False)
        self.register_buffer("text_missing", missing, persistent=False)
        # Items without text share one learned text vector (started at the mean text embedding):
        # an honest "unknown item" in the text space, whitened by the same adaptor as the rest.
        self.missing_text = None
        if bool(missing.any()):
            start = values[present].mean(0) if bool(present.any()) else torch.zeros(values.shape[1])
            self.missing_text = nn.Parameter(start.clone())

        self.hidden_size = config["hidden_size"]
        self.temperature = config["temperature"]
        self.lam = config["lambda"]
        self.item_drop_ratio = config["item_drop_ratio"]
        self.freeze_encoder = config["freeze_encoder"]
        self.item_embedding = (item_id_embedding(self.n_items, self.hidden_size)
                               if self.mode == "transductive" else None)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=self.hidden_size,
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"])
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.initializer_range = config["initializer_range"]
        self.apply(partial(init_like_sasrec, std=self.initializer_range))
        self.moe_adaptor = MoEAdaptor(values.shape[1], self.hidden_size, config["n_exps"],
                                      config["adaptor_dropout_prob"], config["gating_noise"])
        # Set once pre-training ran (kept in checkpoints, so a resumed run knows it).
        self.register_buffer("pretrained", torch.tensor(False))
        self.init_train_candidates(config)


    # -- item and sequence representations --------------------------------------------------------
    def item_text(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings of ``items`` (all items when None), the learned vector where missing."""
        x = self.text_embedding if items is None else self.text_embedding[items]
        if self.missing_text is None:
            return x
        missing = self.text_missing if items is None else self.text_missing[items]
        return torch.where(missing.unsqueeze(-1), self.missing_text, x)

    def item_table(self, with_id: bool = True) -> torch.Tensor:
        """Every item's embedding (n_items, H): adapted text (+ ID embedding if transductive)."""
        table = self.moe_adaptor(self.item_text())
        if with_id and self.item_embedding is not None:
            table = table + self.item_embedding.weight
        return table

    def encode(self, item_seq: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Transformer output at every position (B, L, H); right padding, causal attention."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = item_emb + self.position_embedding(positions).unsqueeze(0)
        x = self.dropout(self.LayerNorm(x))
        mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                table: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence representation (B, H) at each sequence's last item."""
        table = self.item_table() if table is None else table
        out = self.encode(item_seq, table[item_seq])
        return self.gather_indexes(out, item_seq_len - 1)

    def _logits(self, seq_output: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.normalize(seq_output, dim=-1) @ F.normalize(table, dim=-1).T / self.temperature

    # -- fine-tuning --------------------------------------------------------------------------
    def _start_finetune(self) -> None:
        """With ``freeze_encoder``, fine-tuning after pre-training trains only the adaptor (and
        the ID embedding), as the official fine-tuning of a pre-trained model does."""
        if (self.freeze_encoder and bool(self.pretrained)
                and self.position_embedding.weight.requires_grad):
            for p in [*self.position_embedding.parameters(), *self.trm_encoder.parameters()]:
                p.requires_grad_(False)

    def calculate_loss(self, interaction) -> torch.Tensor:
        """Cross-entropy over the training candidates for the next item of each prefix (RecBole
        batches)."""
        self._start_finetune()
        table = self.item_table()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], table)
        logits = self.candidate_logits(self._logits(seq_output, table))
        return F.cross_entropy(logits, interaction[self.POS_ITEM_ID])

    def all_positions_loss(self, item_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the training candidates at every non-padding position (targets 0
        are ignored)."""
        self._start_finetune()
        table = self.item_table()
        out = self.encode(item_seq, table[item_seq])
        keep = targets > 0
        return F.cross_entropy(self.candidate_logits(self._logits(out[keep], table)),
                               targets[keep])

    def predict(self, interaction) -> torch.Tensor:
        """Scores (B,) of the items in ``interaction[ITEM_ID]``."""
        table = self.item_table()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], table)
        item = F.normalize(table[interaction[self.ITEM_ID]], dim=-1)
        return (F.normalize(seq_output, dim=-1) * item).sum(-1) / self.temperature

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores (B, n_items) of every item, column 0 being the padding id."""
        table = self.item_table()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], table)
        return self._logits(seq_output, table)

    # -- pre-training ---------------------------------------------------------------------------
    def item_drop(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop each item with probability ``item_drop_ratio`` (never the first one) and close the
        gaps. Returns the augmented right-padded sequences and their lengths."""
        valid = item_seq > 0
        keep = (torch.rand(item_seq.shape, device=item_seq.device) >= self.item_drop_ratio) & valid
        keep[:, 0] = valid[:, 0]
        rows = torch.arange(item_seq.size(0), device=item_seq.device).unsqueeze(1)
        new_pos = keep.long().cumsum(1) - 1
        out = torch.zeros_like(item_seq)
        out[rows.expand_as(item_seq)[keep], new_pos[keep]] = item_seq[keep]
        return out, keep.sum(1)

    def _contrast(self, anchors: torch.Tensor, positives: torch.Tensor,
                  same_target: torch.Tensor) -> torch.Tensor:
        """InfoNCE with in-batch negatives; other rows with the same next item are removed."""
        logits = anchors @ positives.T / self.temperature
        logits = logits.masked_fill(same_target, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))

    def pretrain_loss(self, item_seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sequence-item + ``lambda`` x sequence-sequence contrastive loss on text alone.

        From each window one prefix is drawn at random (an unbiased sample of the prefix samples
        the official pre-training uses); its next item is the positive of the sequence-item task,
        and an item-dropped copy of the prefix is the positive of the sequence-sequence task.
        """
        self.pretrained.fill_(True)
        n_valid = (targets > 0).sum(1)
        rows = n_valid > 0
        item_seq, targets, n_valid = item_seq[rows], targets[rows], n_valid[rows]
        last = (torch.rand(len(n_valid), device=item_seq.device) * n_valid).long()
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        prefix = torch.where(positions <= last.unsqueeze(1), item_seq, 0)
        target = targets.gather(1, last.unsqueeze(1)).squeeze(1)
        augmented, aug_len = self.item_drop(prefix)

        # Adapt only the items this batch touches (the pre-training stage is text-only).
        ids, inverse = torch.unique(torch.cat([prefix.flatten(), augmented.flatten(), target]),
                                    return_inverse=True)
        adapted = self.moe_adaptor(self.item_text(ids))[inverse]
        n, hidden = prefix.numel(), adapted.size(-1)
        seq_emb = adapted[:n].view(*prefix.shape, hidden)
        aug_emb = adapted[n:2 * n].view(*augmented.shape, hidden)
        target_emb = adapted[2 * n:]

        seq_out = F.normalize(self.gather_indexes(self.encode(prefix, seq_emb), last), dim=-1)
        aug_out = F.normalize(self.gather_indexes(self.encode(augmented, aug_emb), aug_len - 1),
                              dim=-1)
        same = target.unsqueeze(1) == target.unsqueeze(0)
        same.fill_diagonal_(False)
        seq_item = self._contrast(seq_out, F.normalize(target_emb, dim=-1), same)
        seq_seq = self._contrast(seq_out, aug_out, same)
        return seq_item + self.lam * seq_seq
