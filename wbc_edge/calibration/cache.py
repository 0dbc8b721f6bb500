"""Calibration results keyed by what produced them: model ONNX + calibration set + tool versions.

A stored result (a quantized graph, computed activation ranges) is reused only when every part of
the key matches; a stale one is rebuilt, and the log says so and why.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from wbc_edge.bundle import atomic_write_bytes, atomic_write_text, sha256_bytes

LOGGER = logging.getLogger(__name__)


def tool_versions() -> dict[str, str]:
    import onnxruntime

    from wbc_edge import __version__

    return {"wbc_edge": __version__, "onnxruntime": onnxruntime.__version__}


def calibration_key(model_sha256: str, calibration_sha256: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parts of the key, plus `key`: their SHA-256. `options` holds e.g. variant, method, excluded nodes."""
    parts = {"model_sha256": model_sha256, "calibration_sha256": calibration_sha256, "tools": tool_versions(), "options": options or {}}
    parts["key"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


class CalibrationCache:
    """A folder of `<name>.bin` results, each with `<name>.key.json` naming what produced it."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.bin", self.directory / f"{name}.key.json"

    def get(self, name: str, key: dict[str, Any]) -> bytes | None:
        data_path, key_path = self._paths(name)
        if not key_path.is_file() or not data_path.is_file():
            return None
        try:
            stored = json.loads(key_path.read_text())
        except (OSError, json.JSONDecodeError):
            LOGGER.info("calibration cache %s: unreadable key, rebuilding", key_path)
            return None
        if stored.get("key") != key["key"]:
            changed = [k for k in ("model_sha256", "calibration_sha256", "tools", "options") if stored.get(k) != key.get(k)]
            LOGGER.info("calibration cache %s: stale (%s changed), rebuilding", name, ", ".join(changed) or "key")
            return None
        data = data_path.read_bytes()
        if sha256_bytes(data) != stored.get("data_sha256"):
            LOGGER.info("calibration cache %s: stored result fails its checksum, rebuilding", name)
            return None
        LOGGER.info("calibration cache %s: reusing (key %s)", name, key["key"][:12])
        return data

    def put(self, name: str, key: dict[str, Any], data: bytes) -> None:
        data_path, key_path = self._paths(name)
        atomic_write_bytes(data_path, data)
        atomic_write_text(key_path, json.dumps({**key, "data_sha256": sha256_bytes(data)}, indent=2, sort_keys=True))

    def get_or_build(self, name: str, key: dict[str, Any], build: Callable[[], bytes]) -> tuple[bytes, bool]:
        """(result, reused)."""
        cached = self.get(name, key)
        if cached is not None:
            return cached, True
        data = build()
        self.put(name, key, data)
        return data, False
