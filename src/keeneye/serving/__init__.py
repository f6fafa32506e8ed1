"""The HTTP API: ``create_app(settings)`` and the shared synchronous prediction path."""

from keeneye.serving.app import create_app
from keeneye.serving.service import PredictionService

__all__ = ["PredictionService", "create_app"]
