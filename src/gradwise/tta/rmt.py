"""RMT (Robust Mean Teacher): a student adapted towards an EMA teacher with the symmetric cross-entropy,
plus contrastive alignment to source prototypes and, when source data is at hand, source replay.

Follows ``classification/methods/rmt.py`` and ``classification/utils/losses.py`` (``SymmetricCrossEntropy``)
of github.com/mariodoebler/test-time-adaptation at commit 8b2ed63, with ``ema_update_model`` of
``utils/misc.py`` and the ``TTAMethod`` shell of ``methods/base.py``. Only the paper's abstract was
readable in the stored text, so every formula below is the authors' code.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_bool, check_int, check_nonneg, check_positive, check_unit
from gradwise.registry import register
from gradwise.tta._common import BATCHNORM, adapt_forward, inner_module, resolve_head

__all__ = ["symmetric_cross_entropy", "RMT", "RMT_LR"]

PAPER = "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
CODE = "https://github.com/mariodoebler/test-time-adaptation"
# conf.py / cfgs/*/rmt.yaml: OPTIM.METHOD 'Adam', LR 1e-3, BETA 0.9, WD 0
RMT_LR = 1e-3


def _check_logits(name: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
        got = f"a tensor of dtype {t.dtype} and shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) \
            else type(t).__name__
        raise ValueError(f"Invalid {name}: {got} (accepted: a floating tensor of logits [B, C, ...], "
                         "classes along dim 1)")


def symmetric_cross_entropy(x: torch.Tensor, x_ema: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Per-sample symmetric cross-entropy between student logits ``x`` and teacher logits ``x_ema``.

    With ``p = softmax(x)`` and ``q = softmax(x_ema)`` over dim 1::

        SCE_i = -(1 - alpha) Σ_c q_c log p_c  -  alpha Σ_c p_c log q_c

    (the authors' ``SymmetricCrossEntropy``, ``utils/losses.py`` @8b2ed63; ``alpha = 0.5`` weighs both
    directions alike). Returns shape ``[B]`` (``[B, ...]`` for logits ``[B, C, ...]``); no reduction.
    Gradients flow into both arguments: detach ``x_ema`` (or compute it under ``no_grad``) for a teacher.
    """
    _check_logits("x", x)
    _check_logits("x_ema", x_ema)
    if x.shape != x_ema.shape:
        raise ValueError(f"Invalid x_ema: shape {tuple(x_ema.shape)} (accepted: the shape of x, {tuple(x.shape)})")
    alpha = check_unit("alpha", alpha)
    return (-(1 - alpha) * (x_ema.softmax(1) * x.log_softmax(1)).sum(1)
            - alpha * (x.softmax(1) * x_ema.log_softmax(1)).sum(1))


def _contrastive_loss(views: torch.Tensor, batch: int, temperature: float) -> torch.Tensor:
    """SupCon loss (their ``contrastive_loss``, from HobbitLong/SupContrast, ``mode='all'``, no labels) over
    ``views`` ``[V*batch, P]`` (view-major, already projected): every row is an anchor whose positives are
    the other ``V-1`` views of its sample; their temperature / base_temperature factor is 1."""
    n = views.shape[0]
    z = F.normalize(views, p=2, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    # log-softmax over all other rows (the anchor itself excluded), as theirs: logits - log Σ_{k≠i} exp
    log_prob = logits - logits.masked_fill(eye, float("-inf")).logsumexp(1, keepdim=True)
    same = torch.arange(n, device=z.device) % batch
    positives = (same[:, None] == same[None, :]) & ~eye
    return -((positives * log_prob).sum(1) / positives.sum(1)).mean()


@register(kind="test-time-adaptation", name="RMT", paper=PAPER, year=2023, arxiv="2211.13081", code=CODE,
          summary="robust mean teacher: symmetric cross-entropy between student and EMA teacher on test and "
                  "augmented batches, contrastive pull to source prototypes, optional source replay")
class RMT(nn.Module):
    """RMT (Döbler, Marsden, Yang; CVPR 2023, arXiv 2211.13081; authors' code
    github.com/mariodoebler/test-time-adaptation @8b2ed63, ``classification/methods/rmt.py``).

    Paper: "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation". Only the abstract was
    readable in the stored text; the update below is the authors' code, checked step by step against it
    in float64 (``tests/tta/test_rmt.py``).

    Not a :class:`~gradwise.tta._common.TTAWrapper`: that base adapts only BatchNorm affine parameters
    with an SGD default, while RMT trains every parameter, a projector and a teacher. It keeps the same
    calling convention: ``forward(x)`` adapts (``steps`` times, gradients enabled also under
    ``torch.no_grad()``, ``episodic`` resets first) and returns the last step's output, detached;
    ``state_dict()`` holds student, teacher, projector, prototypes and, as extra state, the optimizer
    state and ``num_skipped``.

    Set-up (their ``configure_model``): the model is put in eval mode with **every** parameter trainable;
    every BatchNorm normalizes with the batch's statistics (running statistics dropped). The teacher is a
    frozen deep copy of the configured model. The features are the input of ``head`` (default: the
    model's last ``nn.Linear``, read by a forward pre-hook, flattened per row), as their
    ``split_up_model`` splits a network into encoder and classifier. A projector
    ``Linear(D, projector_dim) → ReLU → Linear(projector_dim, projector_dim)`` (``projector_dim=None``: the
    identity, their DomainNet-126 choice) is trained with the model, in its own optimizer group at the
    first group's learning rate.

    Each call on a test batch ``x`` (``steps`` times), with ``f_s`` the student, ``f_t`` the teacher,
    ``z``/``z'`` the features of ``x``/``augment(x)`` and ``P`` the source prototypes ``[C, D]``:

        L_st   = mean_i ½ SCE(f_s(x)_i, f_t(x)_i) + ½ SCE(f_s(augment(x))_i, f_t(x)_i)
        L_cont = SupCon over the views {P[k_i], z_i, z'_i} of each sample i, projected and L2-normalized,
                 temperature τ, with k_i = argmax_k cos(P_k, z_i) the nearest prototype (no gradient)
        L      = λ_ce_trg L_st + λ_cont L_cont (+ λ_ce_src CE(f_s(x_src), y_src) with source data)

    one optimizer step on ``L``, then the teacher update ``θ_t ← m θ_t + (1 − m) θ_s`` over all parameters
    (``m = teacher_momentum``). It returns ``f_s(x) + f_t(x)``, the ensemble computed before that step's
    update, detached. SCE is :func:`symmetric_cross_entropy` with ``alpha = 0.5``.

    ``source_batches``: ``None`` runs source-free (no replay, no warm-up: their ``LAMBDA_CE_SRC = 0``
    variant); else a re-iterable of ``(inputs, labels)`` batches (a ``DataLoader`` or a list), drawn in
    turn and restarted when exhausted, one batch per step. ``warmup_steps`` (needs ``source_batches``) runs
    their mean-teacher warm-up at construction: on each source batch one step on ``mean SCE(f_s, f_t)``
    (labels unused) with every group's learning rate ramped linearly to its own value, then the teacher
    update. ``source_prototypes`` are the class means of the source features (the head's input).
    ``optimizer=None`` means ``Adam(lr=1e-3, betas=(0.9, 0.999))`` over every module's own ``weight`` and
    ``bias`` (their ``collect_params`` and ``rmt.yaml``); a given optimizer should hold the model's
    parameters, and the projector's group is added to it. ``reset()`` restores student, teacher, projector
    and optimizer to their state after the warm-up (their ``copy_model_and_optimizer``).

    Departures from the authors' code: every ``_BatchNorm`` uses batch statistics with its running
    statistics dropped (theirs does so for ``BatchNorm2d`` and keeps ``BatchNorm1d`` in train mode, which
    normalizes alike); the contrastive loss is written with ``logsumexp`` (same value, their max-shift
    cancels); the warm-up ramps each group's own learning rate (theirs sets every group to the config's
    ``LR``; the same when the groups agree); the single-sample sliding window, mixed precision and their
    warm-up / prototype checkpoint files are not built (pass ``source_prototypes``); a step whose logits
    or loss are not all finite is skipped (no update, no teacher move) and counted in ``num_skipped``
    (one host sync per step); gradients of parameters outside the optimizer are cleared after each step
    (theirs accumulate unused). Bad input raises ``ValueError``/``TypeError`` naming the argument.

    Example::

        rmt = RMT(model, augment=my_augment, source_prototypes=protos)           # source-free
        rmt = RMT(model, augment=my_augment, source_prototypes=protos,
                  source_batches=source_loader, warmup_steps=50_000 // 200)      # replay + warm-up
        with torch.no_grad():
            pred = rmt(x_test).argmax(1)
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 augment: Callable[[torch.Tensor], torch.Tensor], source_prototypes: torch.Tensor,
                 projector_dim: int | None = 128, temperature: float = 0.1, teacher_momentum: float = 0.999,
                 lambda_ce_trg: float = 1.0, lambda_cont: float = 1.0, lambda_ce_src: float = 1.0,
                 source_batches: Iterable | None = None, warmup_steps: int = 0, head: nn.Module | None = None,
                 steps: int = 1, episodic: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Invalid optimizer: {type(optimizer).__name__} (accepted: a torch.optim.Optimizer "
                            "over the model's parameters, or None for Adam(lr=1e-3))")
        if not callable(augment):
            raise TypeError(f"Invalid augment: {type(augment).__name__} (accepted: a callable mapping a batch "
                            "to an augmented batch of the same shape)")
        head = resolve_head(model, head)
        protos = self._check_prototypes(source_prototypes, head)
        if projector_dim is not None:
            projector_dim = check_int("projector_dim", projector_dim, 1)
        temperature = check_positive("temperature", temperature)
        teacher_momentum = check_unit("teacher_momentum", teacher_momentum)
        lambdas = [check_nonneg(n, v) for n, v in (("lambda_ce_trg", lambda_ce_trg), ("lambda_cont", lambda_cont),
                                                   ("lambda_ce_src", lambda_ce_src))]
        warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        if source_batches is not None and (not isinstance(source_batches, Iterable)
                                           or isinstance(source_batches, Iterator)):
            raise TypeError(f"Invalid source_batches: {type(source_batches).__name__} (accepted: None, or a "
                            "re-iterable of (inputs, labels) batches such as a DataLoader or a list)")
        if warmup_steps and source_batches is None:
            raise ValueError(f"Invalid warmup_steps: {warmup_steps} without source_batches (accepted: 0 when "
                             "source-free; the warm-up runs on source batches)")
        super().__init__()
        self.steps = check_int("steps", steps, 1)
        self.episodic = check_bool("episodic", episodic)
        self.model = self.configure(model)
        self.optimizer = self.default_optimizer(model) if optimizer is None else optimizer
        self.num_skipped = 0
        self.augment = augment
        self.temperature = temperature
        self.teacher_momentum = teacher_momentum
        self.lambda_ce_trg, self.lambda_cont, self.lambda_ce_src = lambdas
        self.warmup_steps = warmup_steps
        self.source_batches = source_batches
        self._source_iter = None
        # the teacher is copied before the hook exists, so it captures nothing
        self.teacher = copy.deepcopy(self.model)
        self.teacher.requires_grad_(False)
        self.register_buffer("source_prototypes", protos.detach().clone())
        dim = protos.shape[1]
        if projector_dim is None:
            self.projector = nn.Identity()
        else:  # built after the teacher copy, as theirs (same draws from the global RNG), in the prototypes' dtype
            kw = dict(device=protos.device, dtype=protos.dtype)
            self.projector = nn.Sequential(nn.Linear(dim, projector_dim, **kw), nn.ReLU(),
                                           nn.Linear(projector_dim, projector_dim, **kw))
            self.optimizer.add_param_group({"params": list(self.projector.parameters()),
                                            "lr": self.optimizer.param_groups[0]["lr"]})
        self._feats: torch.Tensor | None = None
        self._hook = head.register_forward_pre_hook(self._capture)
        if warmup_steps:
            self._warmup()
        # reset() returns here: after the warm-up, projector group included
        self.model_state = copy.deepcopy(self.model.state_dict())
        self.teacher_state = copy.deepcopy(self.teacher.state_dict())
        self.projector_state = copy.deepcopy(self.projector.state_dict())
        self.optimizer_state = copy.deepcopy(self.optimizer.state_dict())

    @staticmethod
    def _check_prototypes(protos: Any, head: nn.Module) -> torch.Tensor:
        if not isinstance(protos, torch.Tensor) or not protos.is_floating_point() or protos.dim() != 2 \
                or protos.shape[0] < 1 or protos.shape[1] < 1:
            got = f"shape {tuple(protos.shape)}, dtype {protos.dtype}" if isinstance(protos, torch.Tensor) \
                else type(protos).__name__
            raise ValueError(f"Invalid source_prototypes: {got} (accepted: a floating tensor [C, D], the mean "
                             "source feature of each class)")
        if not bool(torch.isfinite(protos).all()):
            raise ValueError("Invalid source_prototypes: not all finite (accepted: finite class means)")
        in_features = getattr(head, "in_features", None)
        if isinstance(in_features, int) and protos.shape[1] != in_features:
            raise ValueError(f"Invalid source_prototypes: rows of width {protos.shape[1]}, but the head takes "
                             f"{in_features} features (accepted: [C, {in_features}])")
        return protos

    @staticmethod
    def configure(model: nn.Module) -> nn.Module:
        """Their ``configure_model``: eval mode, every parameter trainable, every BatchNorm on batch
        statistics (running statistics dropped), in place."""
        model.eval()
        model.requires_grad_(True)
        for m in inner_module(model).modules():
            if isinstance(m, BATCHNORM):
                m.track_running_stats = False
                m.running_mean = None
                m.running_var = None
        return model

    @staticmethod
    def default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
        """Adam(lr=1e-3, betas=(0.9, 0.999), weight_decay=0) over each module's own ``weight`` and ``bias``
        (their ``collect_params`` and ``rmt.yaml``)."""
        params = [p for m in inner_module(model).modules() for n, p in m.named_parameters(recurse=False)
                  if n in ("weight", "bias") and p.requires_grad]
        return torch.optim.Adam(params, lr=RMT_LR, betas=(0.9, 0.999), weight_decay=0.0)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self._feats = args[0]

    def _student(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student logits and features (the head's input, ``[B, D]``) of ``x``."""
        self._feats = None
        try:
            logits = self.model(x)
            feats = self._feats
        finally:
            self._feats = None
        if feats is None:
            raise RuntimeError("RMT: the head was not called during the model's forward, so there are no "
                               "features (pass head=, the module whose input is the features)")
        return logits, feats.flatten(1)

    def _next_source(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._source_iter is not None:
            batch = next(self._source_iter, None)
            if batch is not None:
                return batch
        self._source_iter = iter(self.source_batches)  # exhausted (or first draw): restart, as their loader
        batch = next(self._source_iter, None)
        if batch is None:
            raise ValueError("Invalid source_batches: empty (accepted: at least one (inputs, labels) batch)")
        return batch

    @torch.no_grad()
    def _update_teacher(self) -> None:
        m = self.teacher_momentum
        for t, s in zip(self.teacher.parameters(), self.model.parameters()):
            t.mul_(m).add_(s, alpha=1 - m)

    def _finish_step(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.model.zero_grad(set_to_none=True)  # parameters outside the optimizer
        self._update_teacher()

    @torch.enable_grad()
    def _warmup(self) -> None:
        base = [g["lr"] for g in self.optimizer.param_groups]
        for i in range(self.warmup_steps):
            for g, lr in zip(self.optimizer.param_groups, base):
                g["lr"] = lr * (i + 1) / self.warmup_steps
            x_src = self._next_source()[0]
            outputs = self._student(x_src)[0]  # through _student: the hook's capture is dropped
            with torch.no_grad():
                outputs_ema = self.teacher(x_src)
            self._finish_step(symmetric_cross_entropy(outputs, outputs_ema).mean(0))
        for g, lr in zip(self.optimizer.param_groups, base):
            g["lr"] = lr

    def adapt_step(self, x: torch.Tensor) -> torch.Tensor:
        outputs_test, feats = self._student(x)
        outputs_aug, feats_aug = self._student(self.augment(x))
        with torch.no_grad():
            outputs_ema = self.teacher(x)
            protos = self.source_prototypes
            if feats.shape[1] != protos.shape[1]:
                raise ValueError(f"Invalid source_prototypes: rows of width {protos.shape[1]}, but the model's "
                                 f"features have {feats.shape[1]} (accepted: [C, {feats.shape[1]}])")
            nearest = (F.normalize(feats, dim=1) @ F.normalize(protos, dim=1).T).argmax(1)
        views = self.projector(torch.cat([protos[nearest], feats, feats_aug], dim=0))
        loss_cont = _contrastive_loss(views, x.shape[0], self.temperature)
        loss_st = (0.5 * symmetric_cross_entropy(outputs_test, outputs_ema)
                   + 0.5 * symmetric_cross_entropy(outputs_aug, outputs_ema)).mean(0)
        loss = self.lambda_ce_trg * loss_st + self.lambda_cont * loss_cont
        if self.source_batches is not None and self.lambda_ce_src > 0:
            x_src, y_src = self._next_source()
            outputs_src = self._student(x_src)[0]
            loss = loss + self.lambda_ce_src * F.cross_entropy(outputs_src, y_src.to(outputs_src.device).long())
        outputs = outputs_test + outputs_ema
        if not bool(torch.isfinite(outputs).all() & torch.isfinite(loss)):  # the one host sync per step
            self.num_skipped += 1
            return outputs
        self._finish_step(loss)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adapt_forward(self, x)

    def reset(self) -> None:
        """Restore student, teacher, projector and optimizer to their state after construction (and
        warm-up). The position in ``source_batches`` is kept, as theirs, and so is ``num_skipped``."""
        self.model.load_state_dict(self.model_state, strict=True)
        self.teacher.load_state_dict(self.teacher_state, strict=True)
        self.projector.load_state_dict(self.projector_state, strict=True)
        self.optimizer.load_state_dict(self.optimizer_state)

    def get_extra_state(self) -> dict[str, Any]:
        # a copy: the optimizer's state_dict holds its live buffers, which load_state_dict would share
        return copy.deepcopy({"optimizer": self.optimizer.state_dict(), "num_skipped": self.num_skipped})

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_skipped = state["num_skipped"]
