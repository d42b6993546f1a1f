"""Challenge-faithful scoring of predictions.zarr against the validation crops.

semantic: block-wise voxel counts; instance: matching and Hausdorff; aggregate: per-class
pooling and the overall score; run: `evaluate`, which writes eval.csv and eval_summary.json.
"""

from cellmapseg.evaluate.aggregate import METRIC_VERSION, REFERENCE, summarise
from cellmapseg.evaluate.instance import InstanceScore, score_instances
from cellmapseg.evaluate.run import evaluate
from cellmapseg.evaluate.semantic import Counts, semantic_counts

__all__ = [
    "METRIC_VERSION", "REFERENCE", "Counts", "InstanceScore", "evaluate", "score_instances",
    "semantic_counts", "summarise",
]
