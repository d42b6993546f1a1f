"""CellMap Segmentation Challenge experiment pipeline: all stage logic lives in this package."""

__version__ = "0.1.0"
