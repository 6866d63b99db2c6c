"""cmrseg: cardiac MR short-axis segmentation (RV, LV myocardium, LV cavity).

Implements the classifier-guided two-stage network with an all-slice fusion transformer
(see ``docs/`` and the paper in ``shared/reference``), its baselines and ablations, the
ACDC slice-level evaluation protocol and a clinical segmentation tool.
"""

__version__ = "0.1.0"
