"""Exceptions a user can act on. Each message is one line naming the item and the problem."""


class WbcError(Exception):
    """Base class: CLIs print str(e) on one line and exit non-zero, no traceback."""


class SpecError(WbcError):
    """A model spec is malformed or does not match what is expected."""


class DataError(WbcError):
    """A dataset, manifest, image or frame is unusable (the message names the file and the problem)."""


class BundleError(WbcError):
    """A bundle is missing, tampered, truncated, or of another schema."""


class CalibrationError(WbcError):
    """A calibration set is unusable or stale."""


class AccuracyGateError(WbcError):
    """An exported precision lost more accuracy than allowed."""


class BackendUnavailable(WbcError):
    """A backend (TensorRT, CUDA, ONNX Runtime provider) is not installed or has no device."""


class SourceError(WbcError):
    """A frame source cannot be opened or read."""


class UsageError(WbcError, ValueError):
    """A command-line or library argument is not one of the allowed values or outside its range."""
