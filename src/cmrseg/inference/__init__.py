"""Inference: a :class:`~cmrseg.inference.predictor.Predictor` rebuilt from a run folder
(``model.json`` + ``weights.safetensors``) or a shipped model, ensembles, ``cmrseg segment`` and
its quality control and report; it never imports training code. The package imports nothing on
its own, so the command line's option table (:mod:`.options`) loads without torch."""
