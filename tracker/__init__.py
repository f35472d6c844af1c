"""Energy and carbon tracking of ML inference, logged to MLflow."""

from __future__ import annotations

__version__ = "0.1.0"
