"""Data layer: datalist, NIfTI I/O, validation, inventory, compact cache and patch sampling."""
