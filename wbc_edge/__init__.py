"""wbc-edge: four-light white-blood-cell classification from training to an edge device."""

__version__ = "0.1.0"
