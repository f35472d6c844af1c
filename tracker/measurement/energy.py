"""Energy as a value type: components, emissions and duration that add, subtract and divide.

A component that could not be measured is NaN, never 0, so that it stays visibly missing through
every sum and ratio. Per-unit figures ("per 1,000 inferences", "per token") are one division each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

KWH_TO_J = 3.6e6


@dataclass(frozen=True)
class Energy:
    """Energy drawn over one measured window, or a per-unit share of it."""

    cpu_kwh: float
    gpu_kwh: float
    ram_kwh: float
    emissions_kg: float
    duration_s: float

    @property
    def total_kwh(self) -> float:
        return self.cpu_kwh + self.gpu_kwh + self.ram_kwh

    @property
    def total_j(self) -> float:
        return self.total_kwh * KWH_TO_J

    @classmethod
    def unavailable(cls, duration_s: float = math.nan) -> Energy:
        """A reading that could not be taken: every energy figure NaN."""
        return cls(math.nan, math.nan, math.nan, math.nan, duration_s)

    @classmethod
    def from_codecarbon(cls, data: Any) -> Energy:
        """From a CodeCarbon ``EmissionsData`` (energies in kWh, emissions in kg CO2eq)."""
        return cls(
            cpu_kwh=float(data.cpu_energy),
            gpu_kwh=float(data.gpu_energy),
            ram_kwh=float(data.ram_energy),
            emissions_kg=float(data.emissions),
            duration_s=float(data.duration),
        )

    def _combine(self, other: Energy, sign: float) -> Energy:
        return Energy(
            *(getattr(self, f.name) + sign * getattr(other, f.name) for f in fields(self))
        )

    def __add__(self, other: Energy) -> Energy:
        return self._combine(other, 1.0)

    def __sub__(self, other: Energy) -> Energy:
        return self._combine(other, -1.0)

    def __mul__(self, factor: float) -> Energy:
        return Energy(*(getattr(self, f.name) * factor for f in fields(self)))

    def __truediv__(self, count: float) -> Energy:
        """The share of one unit when this energy was spent on ``count`` units."""
        if count <= 0:
            raise ValueError(f"cannot divide energy among {count} units")
        return Energy(*(getattr(self, f.name) / count for f in fields(self)))

    def per_1k(self, inferences: int) -> Energy:
        """The share of 1,000 inferences: the paper's unit."""
        return self / inferences * 1000
