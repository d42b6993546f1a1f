"""Challenge-faithful scoring of the predictions store against the validation crops.

metrics: the voxel counts and scores (shared with validation during training); semantic:
block-wise counts; instance: matching and Hausdorff; aggregate: per-class pooling and the
overall score; score: `evaluate`, which writes eval.csv and eval_summary.json.
"""
