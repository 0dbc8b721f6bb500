"""Dataset formats and loaders (no torch): folders of four-light cells, manifest CSVs, single-light folders."""
from wbc_edge.data.dataset import CellDataset, CellRecord
from wbc_edge.data.folders import SINGLE_LIGHT, open_dataset, read_folder
from wbc_edge.data.images import IMAGE_SUFFIXES, read_image, write_image
from wbc_edge.data.manifest import MANIFEST_NAME, read_manifest, write_manifest

__all__ = [
    "CellDataset",
    "CellRecord",
    "IMAGE_SUFFIXES",
    "MANIFEST_NAME",
    "SINGLE_LIGHT",
    "open_dataset",
    "read_folder",
    "read_image",
    "read_manifest",
    "write_image",
    "write_manifest",
]
