"""What the gradwise strategies share: the current global arrays kept from configure_train, and the
per-client updates of the valid train replies."""
from __future__ import annotations

import numpy as np

from gradwise.federated._flwr import arrays_to_numpy, state_to_arrays


def remember_global(strategy, arrays, grid) -> None:
    """Keep the arrays sent this round (as float64 numpy) and the ids of every connected node."""
    strategy.global_arrays = arrays_to_numpy(arrays)
    strategy.known_nodes = sorted(grid.get_node_ids())


def client_updates(strategy, replies) -> tuple[list[int], dict[str, np.ndarray], list]:
    """The valid replies' node ids, ``{name: (m, *shape) float64 updates}`` (client arrays minus the
    global ones), and the reply contents (for the metrics)."""
    valid, _ = strategy._check_and_log_replies(replies, is_train=True)
    nodes = [m.metadata.src_node_id for m in valid]
    contents = [m.content for m in valid]
    updates: dict[str, np.ndarray] = {}
    for name, g in strategy.global_arrays.items():
        rows = [np.asarray(c[strategy.arrayrecord_key][name].numpy(), dtype=np.float64) - g for c in contents]
        updates[name] = np.stack(rows) if rows else np.zeros((0, *g.shape))
    return nodes, updates, contents


def apply_update(strategy, step: dict[str, np.ndarray]):
    """``global + step`` as an ArrayRecord, each array in its original dtype."""
    return state_to_arrays({k: (g.astype(np.float64) + step[k]).astype(g.dtype)
                            for k, g in strategy.global_arrays.items()})


def per_parameter(named, values, what: str) -> list:
    """``values`` (one tensor per ``(name, parameter)`` in ``named``, as a list in that order or a dict by
    name) as a list in ``named``'s order; ValueError naming ``what`` on a missing entry or a wrong shape."""
    if isinstance(values, dict):
        missing = [k for k, _ in named if k not in values]
        if missing:
            raise ValueError(f"Invalid {what}: no entry for parameters {missing}")
        values = [values[k] for k, _ in named]
    values = list(values)
    if len(values) != len(named) or any(tuple(v.shape) != tuple(p.shape) for v, (_, p) in zip(values, named)):
        raise ValueError(f"Invalid {what}: expected one tensor per trainable parameter with its shape, got "
                         f"{[tuple(v.shape) for v in values]} for {[tuple(p.shape) for _, p in named]}")
    return values
