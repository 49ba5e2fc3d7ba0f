"""LISA: layerwise importance sampling, from "LISA: Layerwise Importance Sampling for Memory-Efficient Large
Language Model Fine-Tuning"."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwise._validate import check_bool, check_int
from gradwise.registry import register

__all__ = ["LISA", "LISATrainerCallback", "find_layers"]

_PAPER = "LISA: Layerwise Importance Sampling for Memory-Efficient Large Language Model Fine-Tuning"
_CODE = "https://github.com/OptimalScale/LMFlow"

# where common Hugging Face models keep their blocks (LMFlow's table, relative to the model, and a few more)
LAYER_PATHS = ("model.layers",          # Llama, Qwen2, Mistral, Mixtral, Gemma, Hymba, Phi-3, ...
               "transformer.h",         # GPT-2, GPT-J, Bloom, Falcon
               "model.decoder.layers",  # OPT, BART/T5-style decoders
               "gpt_neox.layers",       # GPT-NeoX, Pythia
               "transformer.blocks",    # MPT
               "model.language_model.layers",  # multimodal wrappers (Llava, Qwen2-VL in transformers 5)
               "layers", "h", "blocks")
_LAST = ("layers", "h", "blocks", "layer")


def _resolve(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: nn.Module, path: str | None = None) -> nn.ModuleList:
    """The list of blocks LISA samples from: ``model.<path>`` if ``path`` is given, else the first of
    :data:`LAYER_PATHS` that is a non-empty ``ModuleList``, else the largest ``ModuleList`` named
    ``layers``/``h``/``blocks``/``layer`` anywhere in the model (e.g. under a PEFT wrapper).

    LMFlow's ``lisa_layers_attribute`` ``"model.model.layers"`` is ``path="model.layers"`` here (theirs
    starts from the callback, whose ``model`` attribute is the model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise ValueError(f"Invalid layers: {path!r} (accepted: a dotted attribute path such as 'model.layers')")
        found = _resolve(model, path)
        if not isinstance(found, (nn.ModuleList, nn.Sequential)) or len(found) == 0:
            raise ValueError(f"Invalid layers: model.{path} is {type(found).__name__} (accepted: a dotted path to "
                             "a non-empty ModuleList of the model's blocks)")
        return found
    for p in LAYER_PATHS:
        found = _resolve(model, p)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    candidates = [m for name, m in model.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) > 0 and name.rsplit(".", 1)[-1] in _LAST]
    if not candidates:
        raise ValueError(f"Invalid model: no list of blocks found in {type(model).__name__} (accepted: a model "
                         f"with one of {LAYER_PATHS}; or pass layers='dotted.path' or the ModuleList itself)")
    return max(candidates, key=len)


@register(kind="training-helper", paper=_PAPER, year=2024, arxiv="2403.17919", code=_CODE,
          summary="Trains only a few randomly sampled middle layers (plus embedding and head), resampled every K steps")
class LISA:
    r"""LISA, layerwise importance sampled training (Pan et al., NeurIPS 2024, arXiv 2403.17919).

    A callback for any training loop: every ``interval`` (``K``) steps, starting at step 0, it freezes
    every block of the model's layer list and unfreezes ``n_layers`` (``gamma``) of them drawn
    uniformly without replacement; parameters outside the list (embedding, head, final norm) are not
    touched, so they are always trained, as the paper's embedding and head. Layers listed in
    ``always_train`` are never frozen nor drawn. ::

        lisa = LISA(model, n_layers=2, interval=20, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)   # all parameters; LISA does not touch it
        for step, batch in enumerate(loader):
            lisa(step)                                        # or lisa.on_step(step)
            loss = model(**batch).loss
            loss.backward(); opt.step(); opt.zero_grad()

    With the Hugging Face Trainer: ``Trainer(..., callbacks=[LISATrainerCallback(model, n_layers=2,
    interval=20)])`` (see :class:`LISATrainerCallback`).

    Sampling rule, the authors' (LMFlow's ``DynamicLayerActivationCallback``): at each step with
    ``step % interval == 0`` the active set is ``RandomState.choice(range(L), n_layers, replace=False)``
    of numpy's legacy generator, from ``numpy.random.RandomState(seed)`` when ``seed`` is given and
    numpy's global generator (as LMFlow) when it is None; with ``always_train`` the draw is over the
    other layers. ``active`` holds the indices in the order drawn.

    The optimizer: build it over all the parameters, before or after LISA (LISA changes nothing until
    its first call, so an optimizer or Trainer that keeps only ``requires_grad`` parameters still gets
    every layer, as LMFlow relies on). A frozen layer gets no gradient (``requires_grad=False``, and
    LISA sets a left-over ``.grad`` to None when it freezes a layer), so torch optimizers skip it
    entirely: no update, no weight decay, no moment update. Its optimizer state is kept (LMFlow's
    behaviour: Adam's moments resume, stale, when the layer is drawn again) unless ``optimizer=`` is
    given with ``release_state=True``: then the state of a layer that is frozen is dropped, which frees
    its memory (the memory the paper counts) and restarts its moments (and Adam's bias correction) when
    it is drawn again.

    Args:
        model: an ``nn.Module`` (its blocks found by :func:`find_layers`), or the blocks themselves
            (an ``nn.ModuleList`` or a sequence of modules).
        n_layers: ``gamma``, layers trained at a time (default 2, LMFlow's ``lisa_activated_layers``).
        interval: ``K``, steps between draws (default 20, LMFlow's ``lisa_interval_steps``).
        layers: dotted path of the block list inside ``model`` (default: found).
        always_train: indices of blocks never frozen (default none).
        seed: seed of LISA's own generator (default None: numpy's global one).
        optimizer, release_state: see above.
        verbose: print the active layers at each draw, as LMFlow does (default False).

    Checked against LMFlow's callback (commit a6b97aa, run unchanged by ``tools/golden/make_lisa_golden.py``):
    the active indices and every layer's ``requires_grad`` at every step, on stand-in models and a tiny
    GPT-2, from the same seed. Departures: parameters a user froze before LISA stay frozen (LMFlow sets
    every parameter of a drawn layer trainable); ``always_train``, ``release_state`` and ``state_dict``
    are additions. The paper's text past its introduction could not be read here; the algorithm and its
    defaults follow the authors' code.
    """

    def __init__(self, model: nn.Module | Sequence[nn.Module], n_layers: int = 2, interval: int = 20, *,
                 layers: str | None = None, always_train: Iterable[int] = (), seed: int | None = None,
                 optimizer: torch.optim.Optimizer | None = None, release_state: bool = False,
                 verbose: bool = False) -> None:
        if isinstance(model, (nn.ModuleList, list, tuple)) and layers is None:
            blocks = list(model)
            if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
                raise ValueError(f"Invalid model: a sequence of {len(blocks)} items (accepted: a model, or a non-empty "
                                 "sequence of nn.Module blocks)")
        else:
            blocks = list(find_layers(model, layers))
        self.layers = blocks
        always = tuple(always_train) if not isinstance(always_train, (str, bytes)) else None
        if always is None or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(blocks)
                                     for i in always) or len(set(always)) != len(always):
            raise ValueError(f"Invalid always_train: {always_train!r} (accepted: distinct layer indices in "
                             f"[0, {len(blocks)}))")
        self.always_train = always
        self.candidates = [i for i in range(len(blocks)) if i not in always]
        if not self.candidates:
            raise ValueError(f"Invalid always_train: {always_train!r} leaves no layer to sample (accepted: at most "
                             f"{len(blocks) - 1} indices)")
        self.n_layers = check_int("n_layers", n_layers, 1, len(self.candidates))
        self.interval = check_int("interval", interval, 1)
        if seed is not None:
            check_int("seed", seed, 0, 2**32 - 1)
        self.seed = seed
        self.rng = np.random.RandomState(seed) if seed is not None else None
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"Invalid optimizer: {type(optimizer).__name__} (accepted: a torch.optim.Optimizer or None)")
        self.optimizer = optimizer
        self.release_state = check_bool("release_state", release_state)
        if release_state and optimizer is None:
            raise ValueError("Invalid release_state: True without an optimizer (accepted: False, or True with "
                             "optimizer=...)")
        self.verbose = check_bool("verbose", verbose)
        # the parameters LISA toggles: those trainable when it was built (a user's own freezing is respected)
        self._trainable = [[p for p in b.parameters() if p.requires_grad] for b in blocks]
        self.active: list[int] = []
        self.draws = 0

    def _draw(self) -> list[int]:
        n = len(self.candidates)
        if self.rng is None:
            picks = np.random.choice(range(n), self.n_layers, replace=False)
        else:
            picks = self.rng.choice(range(n), self.n_layers, replace=False)
        return [self.candidates[int(i)] for i in picks]

    def switch(self) -> list[int]:
        """Freeze every sampled block, draw ``n_layers`` and unfreeze them; returns the drawn indices."""
        for i in self.candidates:
            for p in self._trainable[i]:
                p.requires_grad_(False)
                p.grad = None
        self.active = self._draw()
        self.draws += 1
        on = set(self.active) | set(self.always_train)
        for i, params in enumerate(self._trainable):
            if i in on:
                for p in params:
                    p.requires_grad_(True)
            elif self.release_state:
                for p in params:
                    self.optimizer.state.pop(p, None)
        if self.verbose:
            print(f"LISA: training layers {self.active}", flush=True)
        return self.active

    def on_step(self, step: int, **ctx: Any) -> list[int]:
        """Call before the forward pass of optimizer step ``step`` (0, 1, 2, ...): draws when ``step % interval
        == 0``. Returns the active layers."""
        step = check_int("step", step, 0)
        if step % self.interval == 0:
            self.switch()
        return self.active

    __call__ = on_step

    def state_dict(self) -> dict[str, Any]:
        """The active layers, the number of draws and LISA's generator state (None when it uses numpy's global one)."""
        return {"active": list(self.active), "draws": self.draws,
                "rng": None if self.rng is None else self.rng.get_state(legacy=False)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the generator and the active layers (frozen/unfrozen as saved)."""
        self.draws = int(state["draws"])
        if state.get("rng") is not None:
            if self.rng is None:
                self.rng = np.random.RandomState()
            self.rng.set_state(state["rng"])
        self.active = [int(i) for i in state["active"]]
        on = set(self.active) | set(self.always_train)
        for i in self.candidates:
            for p in self._trainable[i]:
                p.requires_grad_(i in on)


_HF_CLASS: list[type] = []


def _hf_class() -> type:
    if not _HF_CLASS:
        try:
            from transformers import TrainerCallback
        except ImportError as err:  # pragma: no cover - transformers is a test extra
            raise ImportError("LISATrainerCallback needs transformers (pip install transformers); LISA itself "
                              "works in any loop without it") from err
        _HF_CLASS.append(type("LISATrainerCallback", (LISATrainerCallback, TrainerCallback),
                              {"__module__": __name__, "__doc__": LISATrainerCallback.__doc__}))
    return _HF_CLASS[0]


class LISATrainerCallback:
    """:class:`LISA` as a ``transformers.TrainerCallback``: draws at ``on_step_begin`` from the Trainer's
    ``state.global_step``, as LMFlow's ``DynamicLayerActivationCallback``.

    ``LISATrainerCallback(model, n_layers=2, interval=20, ...)`` takes :class:`LISA`'s arguments, or
    ``LISATrainerCallback(lisa)`` an existing one (``.lisa``). The instance is a real ``TrainerCallback``
    subclass, built when first used, so gradwise imports without transformers. The Trainer builds its
    optimizer over the parameters that require gradients before the first step, when LISA has not yet
    frozen anything, so every layer is in it. Example::

        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          callbacks=[LISATrainerCallback(model, n_layers=2, interval=20, seed=0)])
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is LISATrainerCallback:
            cls = _hf_class()
        return super().__new__(cls)

    def __init__(self, model_or_lisa: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(model_or_lisa, LISA):
            if args or kwargs:
                raise ValueError("Invalid arguments: LISATrainerCallback(lisa) takes no others (accepted: a LISA, "
                                 "or LISA's arguments)")
            self.lisa = model_or_lisa
        else:
            self.lisa = LISA(model_or_lisa, *args, **kwargs)

    def on_step_begin(self, args, state, control, **kwargs):
        self.lisa.on_step(int(state.global_step))
