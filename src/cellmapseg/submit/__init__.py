"""The challenge submission: predictions brought to the test crops' ground-truth grids, packed
as one zipped Zarr-2 store, and the check that compares a zip with its manifest."""
