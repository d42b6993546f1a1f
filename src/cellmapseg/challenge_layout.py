"""Where the challenge's Zarr data keep a dataset's EM and its label crops (what its
`csc fetch-data` writes; config.py RAW_NAME and CROP_NAME at 6b9ad68). The one spelling of
these paths: the reader (data.zarr_crops) and the synthetic writer (synthetic.zarr_layout)
both take them from here.

  <root>/<dataset>/<dataset>.zarr/recon-1/em/fibsem-uint8/                  EM levels s0, s1, ...
  <root>/<dataset>/<dataset>.zarr/recon-1/labels/groundtruth/crop<N>/<class>/  one per class
"""

from __future__ import annotations

import os
from pathlib import Path

EM_PATH = "recon-1/em/fibsem-uint8"
GROUNDTRUTH_PATH = "recon-1/labels/groundtruth"


def dataset_path(root: str | os.PathLike, dataset: str) -> Path:
    return Path(root) / dataset / f"{dataset}.zarr"


def crop_key(crop: str | int) -> str:
    """"7", 7 or "crop7" -> "crop7" (the manifest writes numbers, the store crop<N>)."""
    text = str(crop)
    return text if text.startswith("crop") else f"crop{text}"


def crop_path(crop: str | int) -> str:
    """A crop's group inside a dataset's store."""
    return f"{GROUNDTRUTH_PATH}/{crop_key(crop)}"
