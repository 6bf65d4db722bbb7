"""The table of QuantLinear backends, fastest first; `select_backend` walks it."""
from __future__ import annotations

from backend.qlinear import BaseQuantLinear, TorchQuantLinear

BACKENDS: list[type[BaseQuantLinear]] = [TorchQuantLinear]
