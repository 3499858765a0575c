"""Slide bags -> padded torch batches, the one input format of every zoo model.

Keys of a batch (B slides, padded to the largest N; masks are bool, True = valid):

=====================  ===================  ===============================================
key                    shape                meaning
=====================  ===================  ===============================================
``features``           ``(B, N, d)``        low-res features Z
``mask``               ``(B, N)``           valid low-res patches
``coords``             ``(B, N, 2)``        low-res patch positions in patch units (x, y)
``label``              ``(B,)``             class index (long)
``hr_features``        ``(B, N, k, d)``     high-res children U (when the bags have them)
``hr_mask``            ``(B, N, k)``        valid children
``hr_coords``          ``(B, N, k, 2)``     child positions in low-res patch units
``tumour_fraction``    ``(B, N)``           ground truth (when every bag has it)
``<view name>``        ``(B, N, e)``        extra views of the bags, e.g. ``vlm``
=====================  ===================  ===============================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from wsigym.data.bag import SlideBag


def _pad(arrays: Sequence[np.ndarray], n_max: int, dtype: torch.dtype) -> Tensor:
    first = arrays[0]
    out = torch.zeros((len(arrays), n_max, *first.shape[1:]), dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = torch.from_numpy(np.asarray(a))
    return out


def collate(
    bags: Sequence[SlideBag], device: str | torch.device = "cpu", hr: bool = True
) -> dict[str, Tensor]:
    """Pad ``bags`` into one batch (see the module docstring for keys).

    ``hr=False`` leaves out the high-res keys even when the bags carry them.
    """
    if not bags:
        raise ValueError("collate needs at least one bag")
    n_max = max(b.n for b in bags)
    ps = float(bags[0].meta.patch_size_level0)
    batch: dict[str, Tensor] = {
        "features": _pad([b.features for b in bags], n_max, torch.float32),
        "mask": _pad([np.ones(b.n, dtype=bool) for b in bags], n_max, torch.bool),
        "coords": _pad([b.coords.astype(np.float32) / ps for b in bags], n_max, torch.float32),
        "label": torch.tensor([int(b.label) for b in bags], dtype=torch.long),
    }
    if hr and all(b.hr_features is not None for b in bags):
        batch["hr_features"] = _pad([b.hr_features for b in bags], n_max, torch.float32)
        masks = [b.hr_mask if b.hr_mask is not None else np.ones(b.hr_features.shape[:2], bool) for b in bags]
        batch["hr_mask"] = _pad(masks, n_max, torch.bool)
        if all(b.hr_coords is not None for b in bags):
            batch["hr_coords"] = _pad(
                [b.hr_coords.astype(np.float32) / ps for b in bags], n_max, torch.float32
            )
    if all(b.tumour_fraction is not None for b in bags):
        batch["tumour_fraction"] = _pad([b.tumour_fraction for b in bags], n_max, torch.float32)
    for name in set.intersection(*(set(b.views) for b in bags)):
        batch[name] = _pad([b.views[name] for b in bags], n_max, torch.float32)
    return {k: v.to(device) for k, v in batch.items()}
