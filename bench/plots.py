"""Matplotlib for the benchmarks, without a display (the Agg backend writes PNG files)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot

__all__ = ["pyplot"]
