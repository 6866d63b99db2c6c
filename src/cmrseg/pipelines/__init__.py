"""Pipelines that chain the library's steps: :mod:`~cmrseg.pipelines.reproduce` (train and
evaluate the paper's models, write its tables and figure) and :mod:`~cmrseg.pipelines.demo`
(phantom -> train -> segment -> evaluate), both scheduling training runs with
:mod:`~cmrseg.pipelines.scheduler`."""
