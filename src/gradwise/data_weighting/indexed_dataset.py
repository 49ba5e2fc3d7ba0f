"""A dataset wrapper that also returns each sample's index, for per-sample state (SAF's logits memory, DBPM)."""
from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """``IndexedDataset(dataset)[i] == (i, *dataset[i])``: the sample's index first, then the item.

    Methods that keep state per training sample need each batch's dataset indices: SAF's logits memory
    (:class:`gradwise.losses.SAFLoss`), DBPM's loss memory (:class:`gradwise.data_weighting.DBPM`). The order is
    the one of the SAF authors' modified timm loader (``index, input, target``), so with the default collate a
    ``DataLoader`` yields ``(index, x, y)`` with ``index`` an int64 tensor, whatever the sampler or shuffling.
    An item that is not a tuple (a dataset of bare tensors) gives ``(i, item)``. ``len`` and the items are the
    wrapped dataset's; ``dataset`` is the wrapped dataset.

    Example::

        >>> loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=64, shuffle=True)
        >>> for index, xb, yb in loader:
        ...     loss = F.cross_entropy(model(xb), yb) + saf(model(xb), index, epoch)
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"Invalid dataset: {type(dataset).__name__} (accepted: a map-style dataset with "
                            "__getitem__ and __len__)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        return (index, *item) if isinstance(item, tuple) else (index, item)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"
