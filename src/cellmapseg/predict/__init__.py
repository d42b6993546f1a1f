"""Prediction: block-wise sliding window with bounded memory, written to Zarr in the challenge's
layout (`{crop}/{class}` arrays with voxel_size and translation attributes)."""
