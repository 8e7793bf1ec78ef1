"""The figure families by name: the one place a new figure is registered."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .layer_stats import plot_complexity, plot_heads, plot_thresholds
from .head_load import plot_head_load
from .series import plot_grad_norms, plot_loss


FAMILIES: dict[str, Callable[..., np.ndarray]] = {
    "thresholds": plot_thresholds,
    "complexity": plot_complexity,
    "heads": plot_heads,
    "head_load": plot_head_load,
    "grad_norms": plot_grad_norms,
    "loss": plot_loss,
}
