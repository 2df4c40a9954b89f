"""Dagster resources of the code location: settings, the teacher embedder and MLflow."""

from gem_assets.resources.config import GemConfig
from gem_assets.resources.embedder import SentenceTransformerEmbedder
from gem_assets.resources.mlflow import MlflowTracker, TrackingOutcome

__all__ = [
    "GemConfig",
    "SentenceTransformerEmbedder",
    "MlflowTracker",
    "TrackingOutcome",
]
