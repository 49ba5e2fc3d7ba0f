"""Checkpoints of a :class:`~gradwise.preference.trainer.PreferenceTrainer`: versioned
(``format`` and ``version`` tags, older versions read), validated as a whole before anything changes,
and loaded all or nothing (transactional), written through a temporary file.

:class:`CheckpointMixin` holds the trainer's checkpoint methods; it reads the trainer's ``model``,
``optimizer``, ``scheduler``, ``ref_model``, ``device``, caches, ``history`` and data settings.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

#: what ``save_checkpoint`` writes: ``{"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, ...}``
CHECKPOINT_FORMAT = "gradwise.PreferenceTrainer"
#: 2: reference caches keyed by content only (1: untagged, caches keyed by example id where one was given)
CHECKPOINT_VERSION = 2
_LEGACY_KEYS = ("model", "optimizer", "step", "rng")
_EXPECTED_CHECKPOINT = (f"a {CHECKPOINT_FORMAT} checkpoint (format version <= {CHECKPOINT_VERSION}) written by "
                        "PreferenceTrainer.save_checkpoint, with keys 'model', 'optimizer', 'scheduler', 'step', "
                        "'rng', 'ref_cache', ...")


def _check_module_state(sd, module: nn.Module, what: str, bad: Callable[[str], ValueError]) -> None:
    """Raise ``bad(...)`` unless ``sd`` has exactly ``module``'s state_dict names, each with its shape."""
    if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
        raise bad(f"its {what!r} is not a state_dict of tensors")
    mine = module.state_dict()
    missing = [k for k in mine if k not in sd]
    extra = [k for k in sd if k not in mine]
    if missing or extra:
        raise bad(f"its {what!r} does not match this trainer's {what}: missing {missing[:5]}, unexpected "
                  f"{extra[:5]}")
    for k, v in mine.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise bad(f"its {what!r} has {k!r} of shape {tuple(sd[k].shape)}, this trainer's {what} "
                      f"{tuple(v.shape)}")


class CheckpointMixin:
    """``state_dict``/``load_state_dict`` and ``save_checkpoint``/``load_checkpoint`` of the trainer."""

    def state_dict(self) -> dict:
        """Everything a resume needs (see :meth:`save_checkpoint`), tagged with the checkpoint format and version."""
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "ref_model": self.ref_model.state_dict() if self._owns_ref else None,
            "step": self.step,
            "rng": rng,
            "ref_cache": dict(self.ref_cache),
            "extra_cache": {n: dict(c) for n, c in self.extra_cache.items()},
            "history": list(self.history),
            "data": {"seed": self.seed, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                     "shuffle": self.shuffle},
        }

    def _check_state(self, state, source: str) -> int:
        """Validate a whole checkpoint before anything is changed; returns its format version.
        Raises ValueError saying what ``state`` is and what was expected."""
        def bad(problem: str) -> ValueError:
            return ValueError(f"Invalid checkpoint {source}: {problem}; expected {_EXPECTED_CHECKPOINT}")

        if not isinstance(state, Mapping):
            raise bad(f"it holds a {type(state).__name__}, not a checkpoint dict")
        fmt = state.get("format")
        if fmt is None:
            if state and all(torch.is_tensor(v) for v in state.values()):
                raise bad(f"it is a bare state_dict of {len(state)} tensors (e.g. {next(iter(state))!r}), such as "
                          "model.state_dict() writes, not a trainer checkpoint")
            if "state" in state and "param_groups" in state:
                raise bad("it is an optimizer state_dict, not a trainer checkpoint")
            if not all(k in state for k in _LEGACY_KEYS):  # checkpoints of version 1 carried no format tag
                raise bad(f"it is a dict with keys {sorted(map(str, state))[:12]}")
            version = 1
        elif fmt != CHECKPOINT_FORMAT:
            raise bad(f"it is a {fmt!r} file")
        else:
            version = state.get("version")
            if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
                raise bad(f"its format version is {version!r}; this gradwise reads versions 1 to "
                          f"{CHECKPOINT_VERSION} (written by a newer gradwise?)")
        missing = [k for k in _LEGACY_KEYS if k not in state]
        if missing:
            raise bad(f"it lacks {', '.join(map(repr, missing))}")
        _check_module_state(state["model"], self.model, "model", bad)
        if state.get("ref_model") is not None and self.ref_model is not None:
            _check_module_state(state["ref_model"], self.ref_model, "ref_model", bad)
        opt = state["optimizer"]
        if not isinstance(opt, Mapping) or not isinstance(opt.get("param_groups"), Sequence) \
                or not isinstance(opt.get("state"), Mapping):
            raise bad("its 'optimizer' is not an optimizer state_dict (keys 'state', 'param_groups')")
        mine = [len(g["params"]) for g in self.optimizer.param_groups]
        theirs = [len(g.get("params", ())) if isinstance(g, Mapping) else -1 for g in opt["param_groups"]]
        if mine != theirs:
            raise bad(f"its optimizer has parameter groups of {theirs} parameters, this trainer's optimizer "
                      f"{mine}")
        sched = state.get("scheduler")
        if sched is not None and not isinstance(sched, Mapping):
            raise bad(f"its 'scheduler' is a {type(sched).__name__}, not a scheduler state_dict")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise bad(f"its 'step' is {step!r}, not an int >= 0")
        rng = state["rng"]
        if not isinstance(rng, Mapping) or not torch.is_tensor(rng.get("cpu")) or rng["cpu"].dtype != torch.uint8:
            raise bad("its 'rng' has no CPU generator state (a uint8 tensor under 'cpu')")
        for key, kind in (("ref_cache", Mapping), ("extra_cache", Mapping), ("history", Sequence), ("data", Mapping)):
            if key in state and not isinstance(state[key], kind):
                raise bad(f"its {key!r} is a {type(state[key]).__name__}")
        if any(not isinstance(c, Mapping) for c in state.get("extra_cache", {}).values()):
            raise bad("its 'extra_cache' holds something other than one cache dict per model")
        return version

    def load_state_dict(self, state: Mapping, *, source: str = "state") -> None:
        """Restore :meth:`state_dict`'s output, all or nothing.

        The whole ``state`` is validated first (format and version, the
        model's and reference's parameter names and shapes, the optimizer's
        parameter groups, step, RNG state, caches); then the optimizer and
        scheduler load, and, should one of them still refuse its state, both
        are put back as they were before the error is raised. Only then do the
        model, reference and trainer state change. So a failing load leaves
        the trainer exactly as it was. ``source`` names the state in errors.
        """
        version = self._check_state(state, source)
        old_opt = self.optimizer.state_dict()  # load_state_dict replaces the state, so these stay intact
        old_sched = None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict())
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except Exception as err:
            self.optimizer.load_state_dict(old_opt)
            if old_sched is not None:
                self.scheduler.load_state_dict(old_sched)
            raise ValueError(f"Invalid checkpoint {source}: this trainer's {type(self.optimizer).__name__} (or "
                             f"scheduler) refused the saved state ({type(err).__name__}: {err}); nothing was "
                             "loaded") from err
        self.model.load_state_dict(state["model"])  # names and shapes checked above
        if state.get("ref_model") is not None and self.ref_model is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

        def cache(c: Mapping) -> dict:
            # version 1 keyed examples with an "id" by (id, completion index), which repeated ids made
            # wrong; only its content keys (strings) are kept
            return dict(c) if version >= 2 else {k: v for k, v in c.items() if isinstance(k, str)}
        self.ref_cache = cache(state.get("ref_cache", {}))
        saved = state.get("extra_cache", {})
        self.extra_cache = {n: cache(saved.get(n, {})) for n in self.extra_models}
        self.history = list(state.get("history", []))
        mine = {"seed": self.seed, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                "shuffle": self.shuffle}
        if state.get("data", mine) != mine:
            warnings.warn(f"checkpoint data settings {state['data']} differ from this trainer's {mine}: "
                          "the data order will not continue the saved run", stacklevel=2)

    def save_checkpoint(self, path: str | Path) -> None:
        """Write model, optimizer, scheduler, step, RNG state and reference (and extra-model) caches to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (into a trainer built the same way).

        All or nothing (see :meth:`load_state_dict`): a file that cannot be
        read (truncated, not a torch file), that is something else (a bare
        model ``state_dict``, another format or a newer format version) or
        that does not fit this trainer raises one ``ValueError`` saying what
        the file is and what was expected, and leaves model, optimizer and
        trainer as they were.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Invalid checkpoint {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a damaged or foreign file
            raise ValueError(f"Invalid checkpoint {path}: it cannot be read as a torch file, so it is truncated, "
                             f"corrupt or of another format ({type(err).__name__}: {str(err).splitlines()[0][:200]}"
                             f"); expected {_EXPECTED_CHECKPOINT}") from None
        self.load_state_dict(state, source=str(path))
