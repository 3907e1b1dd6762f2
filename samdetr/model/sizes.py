"""Tensors made of feature-map sizes, in a form that ``torch.export`` keeps symbolic."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def sizes_tensor(sizes: Sequence[int], like: Tensor) -> Tensor:
    """``like.new_tensor(sizes)``: a 1-D tensor of ``like``'s dtype and device.

    Under ``torch.export`` with dynamic image sizes the sizes are symbolic ints; ``new_tensor``
    or ``torch.tensor`` would freeze them to the example's values (a graph that only takes
    that image size), where one ``scalar_tensor`` per size keeps them symbolic. The values
    are the same either way.
    """
    return torch.stack([torch.scalar_tensor(s, dtype=like.dtype, device=like.device)
                        for s in sizes])
