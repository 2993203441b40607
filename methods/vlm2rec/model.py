"""The registered VLM2Rec models (docs/vlm2rec.md §5-§6), both RecBole ``SequentialRecommender``s
scored through the harness's common evaluator.

- :class:`VLM2Rec` (``vlm2rec``, direct ranking): ``score(u, i) = cos(h_u, e_i)``, the user
  embedded from the last ``history_len`` items of the input sequence, the item table ``{e_i}``
  encoded once per adapter and cached on disk. Trained by its own loop
  (:mod:`methods.vlm2rec.train`) through ``fit``; its training is shared (the harness publishes it
  in the cache, :func:`benchmark.lifecycle.train`), so a ``vlm2rec`` run and a ``vlm2rec_sasrec``
  stage of the same settings train once.
- :class:`VLM2RecSASRec` (``vlm2rec_sasrec``, SR initialisation): SASRec whose item table is a
  2-layer MLP adapter (LLMEmb-style) over the frozen table of a trained VLM2Rec, its registry
  entry's stage: the harness trains (or reuses) that VLM2Rec first and hands it over through
  ``use_stage``; then the harness Trainer trains SASRec as usual.

Item tables live in ``<cache>/vlm2rec/item-tables/<key>.npz``, keyed by the adapter's content
hash, the backbone's hash, the encoding settings, the input modalities and the dataset.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from benchmark.recbole_compat import import_recbole

import_recbole()

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from baselines.content import item_id_embedding
from baselines.sasrec import SASRec
from benchmark.contract import Capabilities
from benchmark.errors import ConfigError
from benchmark.io import atomic_write, build_dir_once, stable_hash
from benchmark.training import TrainOutcome

from .losses import MODALITIES, Objective, info_nce

log = logging.getLogger(__name__)

TINY_NAME = re.compile(r"(tiny|small)-(qwen2-vl|qwen2\.5-vl|smolvlm|fast-vlm)")
TINY_SEED = 0  # a stand-in backbone is fixed per dataset, like a pretrained checkpoint


# ------------------------------------------------------------------------------------ helpers

def resolve_vlm(name: str, data, cache_dir: Path, split=None) -> Path:
    """The local checkpoint folder of ``name``: a hub name or folder, or ``tiny-<family>`` /
    ``small-<family>`` meaning a random stand-in for this dataset, built once into the cache
    (its tokenizer is trained on the items' texts) and loaded back via ``from_pretrained``;
    ``pretrained-<size>-<family>[:key=value,...]``: a harness-pretrained stand-in
    (``methods.vlm2rec.pretrain``), built once per recipe (with ``pretrain=items``: per recipe,
    dataset and training item set of ``split``)."""
    if name.startswith("pretrained-"):
        from .pretrain import resolve_pretrained

        return resolve_pretrained(name, cache_dir, data, split)
    match = TINY_NAME.fullmatch(name)
    if match is None:
        from benchmark.encoders.checkpoints import resolve_checkpoint

        return resolve_checkpoint(name)
    size, family = match.groups()

    from . import tiny

    recipe = [data.content_hash, TINY_SEED, hashlib.sha256(Path(tiny.__file__).read_bytes())
              .hexdigest()]  # a changed stand-in recipe builds a new folder
    target = cache_dir / "checkpoints" / f"{name}-{stable_hash(recipe)}"

    def build(tmp: Path) -> None:
        texts = [item_text(data, i) or "" for i in range(1, data.n_items)]
        tiny.build_tiny_checkpoint(family, tmp, texts, seed=TINY_SEED, size=size)

    return build_dir_once(target, build, marker="config.json")


def item_text(data, item: int) -> str | None:
    """The item's text for its prompt: the title, then the description (docs §1), each once."""
    parts = []
    for name in ("title", "text"):
        values = data.item_fields.get(name)
        value = (values[item] or "").strip() if values is not None else ""
        if value and value not in parts:
            parts.append(value)
    return ". ".join(parts) or None


def item_contents(data, perturbation: dict | None = None) -> list:
    """Raw content of every item (index 0, padding, is empty), under an input perturbation
    (a spec of ``benchmark.encoders.inputs``: the same items and draws as for every model)."""
    from benchmark.encoders.inputs import perturbed_content

    from .embedder import ItemContent

    texts, images = perturbed_content(data, perturbation,
                                      [item_text(data, i) for i in range(data.n_items)],
                                      [data.image_path(i) for i in range(data.n_items)])
    return [ItemContent(text=t, image=im) for t, im in zip(texts, images)]


def tensor_hash(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a name -> tensor dict."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode() + b"\0" + t.numpy().tobytes())
    return h.hexdigest()[:32]


def embed_dtype(params: dict, device) -> str:
    """bf16 weights only on a CUDA device that supports them (``bf16`` parameter)."""
    cuda = torch.device(device).type == "cuda"
    return "bfloat16" if params["bf16"] and cuda and torch.cuda.is_bf16_supported() else "float32"


def encoding_settings(params: dict, vlm_path: Path, data, device,
                      perturbation: dict | None = None) -> dict:
    """What, besides the adapter, decides the embeddings: backbone, prompts, precision, data,
    and the input perturbation (absent when clean, so clean keys do not change)."""
    from benchmark.encoders.checkpoints import checkpoint_hash

    out = {"vlm": checkpoint_hash(vlm_path), "dtype": embed_dtype(params, device),
           "dataset": data.content_hash,
           **{k: params[k] for k in ("fusion", "max_text_tokens", "image_size", "history_len")}}
    if perturbation is not None:
        out["perturbation"] = perturbation
    return out


def table_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "vlm2rec" / "item-tables" / f"{key}.npz"


def load_table(path: Path) -> torch.Tensor | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return torch.from_numpy(z["fused"].astype(np.float32))


def save_table(path: Path, table: torch.Tensor) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, fused=table.detach().float().cpu().numpy())

    atomic_write(path, write)


# ---------------------------------------------------------------------------- direct ranking

class VLM2Rec(SequentialRecommender):
    """VLM2Rec as a direct ranker: a LoRA-tuned VLM embeds users and items, score = cosine.

    ``forward(histories, targets)`` returns the training loss and its diagnostics (the loss
    terms, p^t, p^v, rho, the weak modality, beta); ``calculate_loss`` is the same on a RecBole
    prefix batch; ``fit`` runs the contrastive SFT loop; ``score`` / ``full_sort_predict`` rank
    all items (column 0, padding, is -inf).
    """

    HARNESS = Capabilities(training="own", weights="adapter", item_table=True,
                           modality_tables=True, input_modalities=True, provenance=True,
                           shared_training=True)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from .embedder import VLMEmbedder

        self.config = config
        self.params = config["harness_params"]
        self.data = dataset.data
        self.history_len = int(config["history_len"])
        self.cache_dir = Path(config["cache_dir"])
        self.objective = Objective(
            tau=config["tau"], lambda_w=config["lambda_w"], lambda_r=config["lambda_r"],
            gamma=config["gamma"], alpha=config["alpha"], tau_r=config["tau_r"],
            use_wpcl=config["wpcl"], use_crtr=config["crtr"])
        self.vlm_path = resolve_vlm(config["vlm"], self.data, self.cache_dir, dataset.split)
        self.log_prior = self._log_prior(config["popularity_prior"], dataset.split)
        lora = None
        if config["lora_r"] > 0:
            lora = {"r": config["lora_r"], "alpha": config["lora_alpha"],
                    "dropout": config["lora_dropout"], "targets": config["lora_targets"]}
        self.embedder = VLMEmbedder(
            self.vlm_path, fusion=config["fusion"], lora=lora, history_len=self.history_len,
            max_text_tokens=config["max_text_tokens"], image_size=config["image_size"],
            dtype=embed_dtype(self.params, config["device"]),
            gradient_checkpointing=config["gradient_checkpointing"])
        # unimodal branches: always with external fusion; with internal fusion only when a
        # term needs them (they cost two more forward passes)
        self.unimodal = config["fusion"] == "external" or config["wpcl"] or config["crtr"]
        # an input perturbation (bench robustness) reaches the raw content read here; it is
        # part of the encoding key, so no clean table or stage is reused for perturbed content
        self.perturbation = config["perturbation"]
        self.encoding = encoding_settings(self.params, self.vlm_path, self.data, config["device"],
                                          self.perturbation)
        self.contents = item_contents(self.data, self.perturbation)
        self.input_modalities: tuple[str, ...] = MODALITIES
        self.probe_grads = False  # set by the trainer on the steps that measure gradients
        self.step_log: list[dict] = []  # calculate_loss's diagnostics (RecBole's own Trainer)
        self._adapter_key: tuple[tuple, str] = ((), "")
        self._table: tuple[str, torch.Tensor] | None = None
        self._users: tuple[str, dict[tuple, torch.Tensor]] = ("", {})

    def provenance(self) -> dict:
        """The backbone behind the embeddings (``stand_in`` True: random weights, not pretrained)."""
        return {"vlm": self.embedder.info()}

    def _log_prior(self, kind: str, split) -> torch.Tensor | None:
        """(n_items,) ``log(training count + 1)`` for ``popularity_prior: logq``, else None.

        In-batch InfoNCE draws its negatives from the batch's targets, i.e. with the training
        targets' popularity q(i), so its optimum is ``cos/tau = log p(i|u) - log q(i) + c(u)``:
        the model learns how much more likely an item is for this user than in general and is
        pushed against popular items. Adding ``log q(i)`` back gives the ranking of p(i|u)
        (the sampling-bias correction of two-tower retrieval). Add-one counts: every
        never-trained item gets 0, so cold items keep their content ranking among themselves.
        """
        if kind == "none":
            return None
        if split is None:
            raise ConfigError("popularity_prior 'logq' needs the training split's item counts")
        return torch.log1p(torch.as_tensor(split.train_item_counts(self.n_items),
                                           dtype=torch.float32))

    # -- content ------------------------------------------------------------------------------
    def set_input_modalities(self, modalities: tuple[str, ...] = MODALITIES) -> None:
        """Feed only these modalities to the VLM at scoring time (the modality-dropout test of
        docs/vlm2rec.md §8a): the other one is removed from every item and history."""
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not modalities:
            raise ConfigError(f"input modalities must be a non-empty subset of {MODALITIES}")
        self.input_modalities = tuple(m for m in MODALITIES if m in modalities)

    def content(self, item: int):
        c = self.contents[item]
        if self.input_modalities == MODALITIES:
            return c
        return type(c)(text=c.text if "text" in self.input_modalities else None,
                       image=c.image if "image" in self.input_modalities else None)

    def _histories(self, item_seq: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
        seq, lens = item_seq.tolist(), lens.tolist()
        return [s[max(0, n - self.history_len):n] for s, n in zip(seq, lens)]

    # -- training -----------------------------------------------------------------------------
    def forward(self, histories: list[list[int]], targets: list[int]) -> tuple[torch.Tensor, dict]:
        """The objective on B (history, next item) pairs: (loss, diagnostics of the batch)."""
        users = self.embedder.encode_users([[self.contents[i] for i in h] for h in histories],
                                           unimodal=self.unimodal)
        items = self.embedder.encode_items([self.contents[i] for i in targets],
                                           unimodal=self.unimodal)
        target_ids = torch.as_tensor(targets, device=users.fused.device)
        loss, terms = self.objective(users, items, target_ids)
        if self.probe_grads:
            terms.update(self.modality_grad_norms(users, items, target_ids))
        return loss, terms

    def modality_grad_norms(self, users, items, target_ids: torch.Tensor) -> dict:
        """Per-modality gradient norms on the shared trainable parameters (docs §8b): each
        branch's unimodal InfoNCE back-propagated separately."""
        params = [p for p in self.parameters() if p.requires_grad]
        out = {}
        for m, h, e, hp, ep in (("text", users.text, items.text, users.text_present,
                                 items.text_present),
                                ("image", users.image, items.image, users.image_present,
                                 items.image_present)):
            loss = info_nce(h, e, self.objective.tau, target_ids, hp & ep, ep)
            if not loss.requires_grad:
                out[f"grad_{m}"] = 0.0
                continue
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            out[f"grad_{m}"] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads
                                                    if g is not None)))
        return out

    def calculate_loss(self, interaction) -> torch.Tensor:
        """RecBole's interface: the objective on a prefix batch (history -> ``POS_ITEM_ID``)."""
        histories = self._histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        loss, terms = self(histories, interaction[self.POS_ITEM_ID].tolist())
        self.step_log.append(terms)
        return loss

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the trainable (adapter) parameters, by name."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)  # in place: bumps the version, the table goes stale

    def save_adapter(self, folder: Path) -> Path:
        """The trained weights: the LoRA adapter in peft's format (not the frozen backbone)."""
        return self.embedder.save_adapter(folder)

    def load_adapter(self, folder: Path) -> None:
        self.embedder.load_adapter(folder)

    def training_identity(self) -> dict:
        """What, besides its parameters, seed, split and evaluator, decides what training
        computes (the key of a shared training): the backbone and the encoding settings."""
        return self.encoding

    def fit(self, split, evaluator, *, seed: int, checkpoint: Path | None = None,
            resume: bool = False, progress: bool = True, on_epoch=None,
            on_step=None) -> TrainOutcome:
        """The contrastive SFT loop; the best adapter restored and its item table cached."""
        from .train import ContrastiveTrainer

        trainer = ContrastiveTrainer(self, self.params, split, evaluator, seed,
                                     checkpoint, progress, on_epoch, on_step)
        outcome = trainer.fit(resume=resume)
        if trainer.is_main:
            save_table(table_path(self.cache_dir, self.table_key()), self.item_table())
        return outcome

    # -- scoring ------------------------------------------------------------------------------
    def adapter_key(self) -> str:
        """Content hash of the adapter, recomputed only after an in-place change of a trainable
        parameter (an optimizer step, loading weights)."""
        version = tuple(p._version for p in self.parameters() if p.requires_grad)
        if self._adapter_key[0] != version:
            self._adapter_key = (version, tensor_hash(self.trainable_state()))
        return self._adapter_key[1]

    def table_key(self) -> str:
        """Key of the embeddings of the current adapter and input modalities (memory and disk)."""
        return stable_hash({"adapter": self.adapter_key(), **self.encoding,
                            "modalities": self.input_modalities}, length=32)

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """(n_items, d) L2-normalised fused item embeddings (row 0 zeros), cached in memory
        and on disk per adapter content and input modalities."""
        key = self.table_key()
        if self._table is not None and self._table[0] == key:
            return self._table[1]
        table = load_table(table_path(self.cache_dir, key))
        if table is None:
            table = self._encode_items()
        table = table.to(self.embedder.device)
        self._table = (key, table)
        return table

    def _encode_items(self) -> torch.Tensor:
        was_training = self.training
        self.eval()
        rows = [torch.zeros(1, self.embedder.dim, device=self.embedder.device)]
        bs = int(self.config["eval_batch_size"])
        for start in range(1, self.n_items, bs):
            items = [self.content(i) for i in range(start, min(start + bs, self.n_items))]
            rows.append(F.normalize(self.embedder.encode_items(items, unimodal=False).fused
                                    .float(), dim=-1))
        self.train(was_training)
        return torch.cat(rows)

    @torch.no_grad()
    def modality_tables(self) -> dict:
        """The text-only and image-only item embeddings (L2-normalised, zero rows where the
        modality is missing) as ``benchmark.features.ModalityFeatures``, for the diagnostics'
        topology and health measures."""
        from benchmark.features import ModalityFeatures

        was_training = self.training
        self.eval()
        parts: dict[str, list] = {m: [] for m in MODALITIES}
        bs = int(self.config["eval_batch_size"])
        for start in range(1, self.n_items, bs):
            b = self.embedder.encode_items(
                [self.content(i) for i in range(start, min(start + bs, self.n_items))],
                unimodal=True)
            for m in MODALITIES:
                parts[m].append((F.normalize(getattr(b, m).float(), dim=-1).cpu(),
                                 getattr(b, f"{m}_present").cpu()))
        self.train(was_training)
        out = {}
        for m, chunks in parts.items():
            values = torch.cat([torch.zeros(1, self.embedder.dim)] + [v for v, _ in chunks])
            present = torch.cat([torch.zeros(1, dtype=torch.bool)] + [p for _, p in chunks])
            values[~present] = 0.0
            out[m] = ModalityFeatures(values.numpy(), present.numpy(),
                                      encoder=f"vlm2rec {m} branch")
        return out

    @torch.no_grad()
    def score(self, users: torch.Tensor, item_seq: torch.Tensor,
              lens: torch.Tensor) -> torch.Tensor:
        """(B, n_items) cosine scores of each user against every item, or ``cos/tau + log
        prior`` under ``popularity_prior: logq``; column 0 is -inf."""
        was_training = self.training
        self.eval()
        table = self.item_table()
        users = self.user_embeddings(self._histories(item_seq, lens))
        scores = users @ table.T
        if self.log_prior is not None:
            scores = scores / self.objective.tau + self.log_prior.to(scores.device)
        scores[:, 0] = -torch.inf
        self.train(was_training)
        return scores

    @torch.no_grad()
    def user_embeddings(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, d) L2-normalised fused user embeddings, memoised per history for the current
        adapter (the last validation pass serves the final one)."""
        key = self.table_key()
        if self._users[0] != key:
            self._users = (key, {})
        memo = self._users[1]
        keys = [tuple(h) for h in histories]
        todo = list(dict.fromkeys(k for k in keys if k not in memo))
        if todo:
            u = self.embedder.encode_users([[self.content(i) for i in h] for h in todo],
                                           unimodal=False)
            for k, row in zip(todo, F.normalize(u.fused.float(), dim=-1)):
                memo[k] = row
        return torch.stack([memo[k] for k in keys])

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.score(interaction[self.USER_ID], interaction[self.ITEM_SEQ],
                          interaction[self.ITEM_SEQ_LEN])

    def predict(self, interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].view(-1, 1)).squeeze(1)


# ------------------------------------------------------------------------- SR initialisation

class AdaptedTable(nn.Module):
    """A frozen (n_items, d) table seen through a 2-layer MLP adapter to the SR hidden size
    (LLMEmb's d -> d/2 -> hidden, with a GELU between the layers), plus a zero-initialised ID
    embedding when ``use_id`` (a hybrid: see :func:`baselines.content.item_id_embedding`).
    Behaves like the ``nn.Embedding`` it replaces: ``table(ids)`` and ``table.weight``."""

    def __init__(self, n_items: int, dim: int, hidden: int, dropout: float, use_id: bool = False):
        super().__init__()
        self.register_buffer("frozen", torch.zeros(n_items, dim))
        mid = max(1, dim // 2)
        self.mlp = nn.Sequential(nn.Linear(dim, mid), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mid, hidden))
        self.id_embedding = item_id_embedding(n_items, hidden) if use_id else None

    @property
    def weight(self) -> torch.Tensor:
        table = self.mlp(self.frozen)
        return table if self.id_embedding is None else table + self.id_embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.mlp(self.frozen[ids])
        return rows if self.id_embedding is None else rows + self.id_embedding(ids)


class VLM2RecSASRec(SASRec):
    """SASRec initialised from VLM2Rec item embeddings (docs/vlm2rec.md §6, mode 2).

    Its registry entry's stage is the ``vlm2rec`` model under the preset ``stage1_preset`` and
    the overrides ``stage1_overrides`` (same seed, split and evaluation settings): the harness
    trains it first, or reuses its published training, and hands it over through
    :meth:`use_stage`; this model then freezes the stage's item table (computed from the
    content it was built on, perturbed or clean) and learns the adapter and SASRec on top.
    Until a stage is given, the table is zeros.
    """

    HARNESS = Capabilities(all_positions=True, train_split=True, stage=True, item_table=True,
                           modality_tables=True, provenance=True,
                           content_buffers=("item_embedding.frozen",))

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.params = config["harness_params"]
        self.data = dataset.data
        # the stage's resolved parameters, given by the harness (its registry entry's stage)
        self.vlm_path = resolve_vlm(config["stage_params"]["vlm"], self.data,
                                    Path(config["cache_dir"]), dataset.split)
        from transformers import AutoConfig

        vlm_config = AutoConfig.from_pretrained(self.vlm_path)  # the size, not the weights
        dim = int(getattr(vlm_config, "text_config", vlm_config).hidden_size)
        self.item_embedding = AdaptedTable(self.n_items, dim, config["hidden_size"],
                                           config["hidden_dropout_prob"], bool(config["use_id"]))
        self.item_embedding.mlp.apply(self._init_weights)
        # the stage model, held outside the module tree: not part of this model's weights
        self._stage: tuple[VLM2Rec, ...] = ()

    def use_stage(self, stage: VLM2Rec) -> None:
        """Freeze the trained stage's item table (n_items, d) under the adapter."""
        table = stage.item_table().detach()
        if table.shape != self.item_embedding.frozen.shape:
            raise ConfigError(f"VLM2Rec item table has shape {tuple(table.shape)}, expected "
                              f"{tuple(self.item_embedding.frozen.shape)}")
        self.item_embedding.frozen.copy_(table.to(self.item_embedding.frozen.device))
        self._stage = (stage,)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight

    def provenance(self) -> dict:
        """The backbone behind the stage's item table (``stand_in``: not pretrained weights;
        ``stand_in_kind``: "random" or "harness-pretrained")."""
        from .tiny import is_tiny_checkpoint, stand_in_kind

        return {"vlm": {"path": str(self.vlm_path), "stand_in": is_tiny_checkpoint(self.vlm_path),
                        "stand_in_kind": stand_in_kind(self.vlm_path)}}

    def modality_tables(self) -> dict:
        """The stage's unimodal item tables (see :meth:`VLM2Rec.modality_tables`)."""
        if not self._stage:
            raise ConfigError("vlm2rec_sasrec has no trained stage yet")
        return self._stage[0].modality_tables()
