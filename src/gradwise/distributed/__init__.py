"""Compressed data-parallel training as ``torch.distributed`` DDP communication hooks.

Register a hook with ``DistributedDataParallel.register_comm_hook(state, hook)``, like PyTorch's PowerSGD
hook. Compressors (Top-K, torch's PowerSGD) report the bytes each worker sends per step; hook states save
and load their error buffers with ``state_dict`` / ``load_state_dict``.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
