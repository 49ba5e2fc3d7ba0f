"""The ``tta`` study's work: digits images, the BN-CNN, the methods table (name -> factory), the streams and
what one seed measures (:func:`run_seed`). The study record, summary and report are in ``tta_study.py``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DigitsImages", "digits_images", "BNCNN", "train_source", "Adapter", "Context", "METHODS",
           "NOT_YET_IN", "KINDS", "ORDERS", "run_seed", "rws_check"]

KINDS = ("noise", "smooth", "contrast", "rotation")
ORDERS = ("iid", "continual", "label")
# methods of issue 17's table that other work is adding: one entry each in METHODS when they land
NOT_YET_IN = ("alpha-bn",)


@dataclass(frozen=True)
class DigitsImages:
    """scikit-learn's digits as [N, 1, 8, 8] images in [0, 1] (pixel / 16), split stratified by a fixed
    seed into training (source), validation (tuning streams) and test (the test streams)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def digits_images(split_seed: int = 0) -> DigitsImages:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=split_seed)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.2, stratify=y_tr, random_state=split_seed)

    def img(a: Any) -> Tensor:
        return torch.from_numpy((a / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)

    def lab(a: Any) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return DigitsImages(img(x_tr), lab(y_tr), img(x_va), lab(y_va), img(x_te), lab(y_te))


class BNCNN(nn.Module):
    """conv 1->c - BN - ReLU - conv c->2c - BN - ReLU - max-pool 2 - conv 2c->2c - BN - ReLU - global
    average pool - linear 2c->10 (``fc``, whose input is the features LAME and AdaNPC read)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def _fit(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, lr: float, batch_size: int,
         gen: torch.Generator) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def train_source(data: DigitsImages, seed: int, *, epochs: int, channels: int = 16, lr: float = 3e-3,
                 batch_size: int = 32) -> BNCNN:
    """The source model of a seed: the BN-CNN trained on the clean training digits (Adam), in eval mode."""
    torch.manual_seed(seed)
    return _fit(BNCNN(channels), data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=batch_size,
                gen=torch.Generator().manual_seed(seed))


@torch.no_grad()
def accuracy(predict: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch_size: int) -> float:
    """Accuracy of ``predict`` over ``x`` in batches (a last batch of one sample is dropped: batch
    statistics need two)."""
    hits = n = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        if len(yb) < 2:
            continue
        hits += int((predict(xb).argmax(1) == yb).sum())
        n += len(yb)
    return hits / max(n, 1)


# ----- the methods: name -> factory(Context) -> Adapter ----------------------------------------------------

@dataclass
class Context:
    """What a method's factory gets for one stream: a fresh copy of the source model (its to change),
    the source features and labels (AdaNPC's memory), EATA's Fishers and the tuned values."""

    model: nn.Module
    cfg: Any
    source_feats: Tensor
    source_labels: Tensor
    fishers: dict[str, Any] | None = None
    tuned: dict[str, float] = field(default_factory=dict)


@dataclass
class Adapter:
    """A method on one stream: ``predict(x)`` adapts (if it does) and returns the batch's logits or scores;
    ``clean(x)`` predicts with the current weights and no update (the clean accuracy after adaptation);
    ``backward()`` is the number of samples back-propagated so far."""

    predict: Callable[[Tensor], Tensor]
    clean: Callable[[Tensor], Tensor]
    backward: Callable[[], int] = lambda: 0


def _source(ctx: Context) -> Adapter:
    m = ctx.model.eval()
    return Adapter(m, m)


def _test_bn(ctx: Context) -> Adapter:
    from gradwise.tta import configure_bn

    m = configure_bn(ctx.model)  # batch statistics, nothing updated (no optimizer)
    return Adapter(m, m)


def _sgd(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    from gradwise.tta import bn_parameters

    return torch.optim.SGD(bn_parameters(model), lr=cfg.lr, momentum=0.9)


class _Counted:
    """Tent with a count of the samples it back-propagated (every sample of every finite step)."""

    def __init__(self, tent: Any) -> None:
        self.tent, self.n = tent, 0

    def __call__(self, x: Tensor) -> Tensor:
        skipped = self.tent.num_skipped
        out = self.tent(x)
        self.n += len(x) * (self.tent.steps - (self.tent.num_skipped - skipped))
        return out


def _tent(ctx: Context) -> Adapter:
    from gradwise.tta import Tent, configure_bn

    configure_bn(ctx.model)
    tent = Tent(ctx.model, _sgd(ctx.model, ctx.cfg))
    counted = _Counted(tent)
    return Adapter(counted, tent.model, lambda: counted.n)


def _eata_adapter(ctx: Context, fishers: dict[str, Any] | None) -> Adapter:
    from gradwise.tta import EATA, configure_bn

    configure_bn(ctx.model)
    eata = EATA(ctx.model, _sgd(ctx.model, ctx.cfg), fishers=fishers, fisher_alpha=ctx.cfg.fisher_alpha,
                e_margin=0.4 * math.log(10), d_margin=ctx.tuned.get("d_margin", 1.0))
    return Adapter(eata, eata.model, lambda: eata.num_selected)


def _eata(ctx: Context) -> Adapter:
    return _eata_adapter(ctx, ctx.fishers)


def _eta(ctx: Context) -> Adapter:
    return _eata_adapter(ctx, None)


def _lame(ctx: Context) -> Adapter:
    from gradwise.tta import LAME

    lame = LAME(ctx.model, head=ctx.model.fc, knn=min(5, ctx.cfg.batch_size))  # the authors' defaults
    return Adapter(lame, ctx.model.eval())


def _adanpc(ctx: Context) -> Adapter:
    from gradwise.tta import AdaNPC

    npc = AdaNPC(ctx.model, ctx.source_feats, ctx.source_labels, k=ctx.cfg.npc_k, head=ctx.model.fc,
                 beta=ctx.tuned.get("beta", 0.1))
    return Adapter(npc, ctx.model.eval())


def _rmt(ctx: Context) -> Adapter:
    from gradwise.tta import RMT

    # source-free (no source replay, no warm-up), the authors' defaults otherwise (Adam 1e-3 on every
    # weight and bias, teacher momentum 0.999); prototypes = class means of the source features; augment =
    # pixel noise and a one-pixel shift, seeded so that a stream repeats
    labels = ctx.source_labels
    protos = torch.stack([ctx.source_feats[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    gen = torch.Generator().manual_seed(0)

    def augment(x: Tensor) -> Tensor:
        noise = 0.05 * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        shift = int(torch.randint(-1, 2, (), generator=gen))
        return (torch.roll(x, shifts=shift, dims=-1) + noise).clamp(0.0, 1.0)

    rmt = RMT(ctx.model, augment=augment, source_prototypes=protos, head=ctx.model.fc)
    counted = {"n": 0}

    def predict(x: Tensor) -> Tensor:
        counted["n"] += len(x)
        return rmt(x)
    return Adapter(predict, rmt.model, lambda: counted["n"])


# The methods, in the leaderboard's default order: a new method (alpha-bn) is one entry here.
METHODS: dict[str, Callable[[Context], Adapter]] = {
    "source": _source, "test-bn": _test_bn, "tent": _tent, "eta": _eta, "eata": _eata, "lame": _lame,
    "adanpc": _adanpc, "rmt": _rmt,
}


# ----- streams ----------------------------------------------------------------------------------------------

def _streams(x: Tensor, y: Tensor, severity: int, seed: int, cfg: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """The three streams of one severity: i.i.d.; continual (the domains one after another, ``loops``
    times); label-shifted (domains one after another, each sorted by label, or Dirichlet(label_alpha))."""
    from gradwise.continual import corruption_stream

    s = seed * 10 + severity
    xi, yi, _ = corruption_stream(x, y, KINDS, severity, "iid", seed=s)
    xc, yc, _ = corruption_stream(x, y, KINDS, severity, "continual", seed=s)
    alpha = cfg.label_alpha if cfg.label_alpha > 0 else None
    xl, yl, _ = corruption_stream(x, y, KINDS, severity, "label-shift", alpha=alpha, seed=s)
    return {"iid": (xi, yi), "continual": (xc.repeat(cfg.loops, 1, 1, 1), yc.repeat(cfg.loops)),
            "label": (xl, yl)}


@torch.no_grad()
def _run_stream(adapter: Adapter, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Per-sample correctness (bool) of the predictions made online, batch by batch (a last batch of one
    sample is dropped)."""
    hits = []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        if len(yb) < 2:
            continue
        hits.append(adapter.predict(xb).argmax(1) == yb)
    return torch.cat(hits)


def _features(model: nn.Module, x: Tensor) -> Tensor:
    got: list[Tensor] = []
    h = model.fc.register_forward_pre_hook(lambda m, a: got.append(a[0]))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        h.remove()
    return got[0]


def _tune(name: str, values: tuple[float, ...], base: Context, source: nn.Module, data: DigitsImages,
          seed: int, cfg: Any) -> float:
    """The value of ``name`` with the lowest error on a validation stream (the validation digits, every
    corruption at severity 2, continual order, ``loops`` loops; its own seed; the first ``test_limit``
    validation images); ties go to the first value."""
    from gradwise.continual import corruption_stream

    xv, yv = data.x_val[: cfg.test_limit], data.y_val[: cfg.test_limit]
    x, y, _ = corruption_stream(xv, yv, KINDS, 2, "continual", seed=10_000 + seed)
    x, y = x.repeat(cfg.loops, 1, 1, 1), y.repeat(cfg.loops)
    best, best_err = values[0], math.inf
    method = "eata" if name == "d_margin" else "adanpc"
    for v in values:
        ctx = Context(copy.deepcopy(source), cfg, base.source_feats, base.source_labels, base.fishers, {name: v})
        err = 1.0 - float(_run_stream(METHODS[method](ctx), x, y, cfg.batch_size).float().mean())
        if err < best_err - 1e-9:
            best, best_err = v, err
    return best


D_MARGINS = (0.05, 0.2, 0.4, 0.6, 0.8, 1.0)
# softmax of AdaNPC's scores lies in [1/C, e/(e + C - 1)] = [0.1, 0.232] for C = 10: 0.1 adds every test
# sample (the authors' default), 1.1 none
BETAS = (0.1, 0.15, 0.2, 0.22, 1.1)


def run_seed(methods: tuple[str, ...], data: DigitsImages, cfg: Any, seed: int,
             source: nn.Module | None = None) -> list[dict[str, Any]]:
    """Every method of ``methods`` on the seed's source model (trained here unless given): one row each,
    with the error per order (mean over severities), per continual loop, the clean accuracy after the
    continual streams and the samples back-propagated."""
    from gradwise.tta import eata_fishers

    source = train_source(data, seed, epochs=cfg.source_epochs) if source is None else source
    x_test, y_test = data.x_test[: cfg.test_limit], data.y_test[: cfg.test_limit]
    clean_src = accuracy(source, data.x_test, data.y_test, cfg.batch_size)
    base = Context(source, cfg, _features(source, data.x_train), data.y_train)
    if "eata" in methods:
        base.fishers = eata_fishers(copy.deepcopy(source), list(data.x_val.split(cfg.batch_size * 4)))
    tuned: dict[str, float] = {}
    if "eata" in methods or "eta" in methods:
        tuned["d_margin"] = _tune("d_margin", D_MARGINS, base, source, data, seed, cfg)
    if "adanpc" in methods:
        tuned["beta"] = _tune("beta", BETAS, base, source, data, seed, cfg)
    streams = {s: _streams(x_test, y_test, s, seed, cfg) for s in cfg.severities}
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m, "seed": seed, "clean_source": clean_src, **tuned}
        errs: dict[str, list[float]] = {o: [] for o in ORDERS}
        loops: list[list[float]] = []
        clean_after, backward = [], 0
        for sev, by_order in streams.items():
            for order, (x, y) in by_order.items():
                ctx = Context(copy.deepcopy(source), cfg, base.source_feats, base.source_labels, base.fishers, tuned)
                adapter = METHODS[m](ctx)
                hit = _run_stream(adapter, x, y, cfg.batch_size).float()
                errs[order].append(1.0 - float(hit.mean()))
                row[f"err_{order}_s{sev}"] = errs[order][-1]
                backward += adapter.backward()
                if order == "continual":
                    loops.append([1.0 - float(c.mean()) for c in hit.chunk(cfg.loops)])
                    clean_after.append(accuracy(adapter.clean, data.x_test, data.y_test, cfg.batch_size))
        for order in ORDERS:
            row[f"err_{order}"] = sum(errs[order]) / len(errs[order])
        row["loop_errs"] = [sum(col) / len(col) for col in zip(*loops)]
        row["loop_rise"] = row["loop_errs"][-1] - row["loop_errs"][0]
        row["clean_after"] = sum(clean_after) / len(clean_after)
        row["clean_drop"] = clean_src - row["clean_after"]
        row["backward"] = backward
        rows.append(row)
    return rows


def rws_check(data: DigitsImages, cfg: Any, seed: int, source: nn.Module) -> dict[str, float]:
    """RWS on the BN-CNN: fine-tune a copy of the (clean) source model on noisy training digits (noise at the
    highest severity run), take its weight signature against the clean model over the two shallowest
    layers, patch the clean model with it; accuracies on the noisy and the clean test digits (eval mode)."""
    from gradwise.continual import corrupt
    from gradwise.tta import patch, weight_signature

    sev = max(cfg.severities)
    gen = torch.Generator().manual_seed(20_000 + seed)
    x_noisy = corrupt(data.x_train, "noise", sev, generator=gen, value_range=(0.0, 1.0))
    robust = _fit(copy.deepcopy(source).train(), x_noisy, data.y_train, epochs=cfg.rws_epochs, lr=1e-3,
                  batch_size=32, gen=torch.Generator().manual_seed(seed))
    sig = weight_signature(source, robust, num_layers=cfg.rws_layers)
    patched = patch(copy.deepcopy(source), sig, 1.0).eval()
    xt = corrupt(data.x_test, "noise", sev, generator=torch.Generator().manual_seed(30_000 + seed),
                 value_range=(0.0, 1.0))
    b = 64
    return {"rws_noisy_clean_model": accuracy(source, xt, data.y_test, b),
            "rws_noisy_robust_model": accuracy(robust, xt, data.y_test, b),
            "rws_noisy_patched": accuracy(patched, xt, data.y_test, b),
            "rws_clean_clean_model": accuracy(source, data.x_test, data.y_test, b),
            "rws_clean_patched": accuracy(patched, data.x_test, data.y_test, b)}
