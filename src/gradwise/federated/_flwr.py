"""Lazy access to flwr: gradwise.federated imports without it; the strategies and apps need it."""
from __future__ import annotations

import importlib
from types import ModuleType


def require_flwr(module: str = "flwr") -> ModuleType:
    """Import ``module`` (a flwr module), or raise ImportError saying how to install flwr."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised only without flwr
        raise ImportError(f"{module} is needed for gradwise's Flower strategies and apps: "
                          "pip install 'flwr[simulation]==1.42.0' (or gradwise[federated])") from e


def state_to_arrays(state: dict):
    """A torch ``state_dict`` (or a dict of numpy arrays) as a Flower ``ArrayRecord``."""
    import numpy as np

    flwr_app = require_flwr("flwr.app")
    record = flwr_app.ArrayRecord()
    for k, v in state.items():
        a = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        record[k] = flwr_app.Array.from_numpy_ndarray(np.ascontiguousarray(a))
    return record


def arrays_to_numpy(record) -> dict:
    """A Flower ``ArrayRecord`` as an ordered dict of numpy arrays (names kept)."""
    return {k: v.numpy() for k, v in record.items()}
