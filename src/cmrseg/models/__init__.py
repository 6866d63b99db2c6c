"""The paper's networks (Tables 1-2): SK-UNet, all-slice fusion transformer, classifier-
guided refinement, Det+Seg and every ablation, by name through a registry."""

from cmrseg.models.det_seg import DetSegNet
from cmrseg.models.outputs import SegOutput, gate_logits
from cmrseg.models.registry import PROPOSED, create_model, list_models, register_model
from cmrseg.models.two_stage import TwoStageNet
from cmrseg.models.unet import SegmentationNet

__all__ = ["create_model", "list_models", "register_model", "SegOutput", "gate_logits", "SegmentationNet",
           "TwoStageNet", "DetSegNet", "PROPOSED"]
