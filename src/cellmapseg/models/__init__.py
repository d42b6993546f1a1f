"""Networks (a registry of types), the partial-annotation loss, Mixup, the training/inference
module Net and its checkpoints."""

from cellmapseg.models.loss import PartialAnnotationLoss
from cellmapseg.models.mixup import mixup
from cellmapseg.models.net import Net
from cellmapseg.models.registry import (
    build_network,
    check_model,
    count_parameters,
    level_weights,
    roi_divisor,
)

__all__ = [
    "Net", "PartialAnnotationLoss", "build_network", "check_model", "count_parameters",
    "level_weights", "mixup", "roi_divisor",
]
