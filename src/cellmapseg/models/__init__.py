"""Networks, the partial-annotation loss, Mixup and the training/inference module Net."""

from cellmapseg.models.loss import PartialAnnotationLoss
from cellmapseg.models.mixup import mixup
from cellmapseg.models.net import Net
from cellmapseg.models.networks import (
    build_network,
    check_roi,
    count_parameters,
    level_weights,
    roi_divisor,
)

__all__ = [
    "Net", "PartialAnnotationLoss", "build_network", "check_roi", "count_parameters",
    "level_weights", "mixup", "roi_divisor",
]
