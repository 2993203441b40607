"""Linear probes: what item attributes a content encoder's features carry, on items no
training interaction ever showed.

On a dataset whose ``.item`` file has hidden attribute columns (the synthetic world's ``color``,
``shape``, ``brand``, ``product``), :func:`probe_features` fits one multinomial logistic
regression per (modality, attribute) on the *warm* items' features (items with a training
interaction) and reports its accuracy on the *cold* items (none). Image features are probed for
colour and shape, text features for brand and product; the crossed probes (image -> brand,
text -> colour, ...) are controls that should stay near chance, since each attribute is drawn
into one modality only. The hidden columns are read here as an analysis, never fed to a model.
"""

from __future__ import annotations

import numpy as np

from ..features import ModalityFeatures

#: attributes each modality should carry (the others are its controls)
OWN_ATTRIBUTES = {"image": ("color", "shape"), "text": ("brand", "product")}
ATTRIBUTES = ("color", "shape", "brand", "product")
L2 = 1e-3  # weight decay of the probe (fixed a priori, never tuned on the probe's result)
MAX_ITER = 300  # LBFGS iterations


def probe_features(data, split, features: dict[str, ModalityFeatures]) -> dict[str, dict]:
    """Cold-item accuracy of a linear probe per (modality, attribute).

    Returns ``{"<modality>_<attribute>": {"accuracy", "chance", "control", "train_items",
    "test_items"}}`` for every modality of ``features`` among image/text and every attribute
    column the dataset has; ``chance`` is 1 / the number of values of the attribute;
    ``control`` is True for an attribute the modality does not carry. Items whose modality is
    missing are left out. {} when the dataset has no attribute column or the split leaves no
    warm or no cold item with the modality. Deterministic (full-batch LBFGS from zeros).
    """
    columns = [a for a in ATTRIBUTES if a in data.item_fields]
    if not columns:
        return {}
    warm = split.train_item_counts(data.n_items) > 0
    warm[0] = False
    cold = ~warm
    cold[0] = False
    out: dict[str, dict] = {}
    for modality in ("image", "text"):
        feats = features.get(modality)
        if feats is None:
            continue
        train, test = np.flatnonzero(warm & feats.present), np.flatnonzero(cold & feats.present)
        if len(train) < 2 or len(test) == 0:
            continue
        for attribute in columns:
            values = np.asarray(data.item_fields[attribute], dtype=object)
            classes = sorted({str(v) for v in values[1:]})
            code = {c: k for k, c in enumerate(classes)}
            y = np.array([code[str(v)] for v in values[1:]], dtype=np.int64)
            y = np.concatenate([[-1], y])
            predicted = fit_predict(feats.values[train], y[train], feats.values[test],
                                    len(classes))
            out[f"{modality}_{attribute}"] = {
                "accuracy": round(float(np.mean(predicted == y[test])), 4),
                "chance": round(1.0 / len(classes), 4),
                "control": attribute not in OWN_ATTRIBUTES[modality],
                "train_items": len(train), "test_items": len(test)}
    return out


def probe_metrics(probes: dict[str, dict]) -> dict[str, float]:
    """The probes' accuracies as flat metrics (``probe_<modality>_<attribute>``)."""
    return {f"probe_{k}": v["accuracy"] for k, v in probes.items()}


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                n_classes: int, l2: float = L2, max_iter: int = MAX_ITER) -> np.ndarray:
    """Multinomial logistic regression (features standardised on the training rows, mean
    cross-entropy + ``l2`` * squared weights, full-batch LBFGS from zero weights): the
    predicted class of each test row."""
    import torch

    x = torch.as_tensor(x_train, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    xt = (torch.as_tensor(x_test, dtype=torch.float64) - mean) / std
    y = torch.as_tensor(y_train)
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problem: threads cost more than they give on busy cores
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        return (xt @ w + b).argmax(1).numpy()
