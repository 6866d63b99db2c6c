"""Inference: a :class:`Predictor` rebuilt from a run folder (``model.json`` +
``weights.safetensors``) or a shipped model; it never imports training code."""

from cmrseg.inference.predictor import Prediction, Predictor, shipped_models

__all__ = ["Predictor", "Prediction", "shipped_models"]
