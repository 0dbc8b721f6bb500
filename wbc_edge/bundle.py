"""The bundle: the one versioned artefact export writes and the runtime loads.

A bundle is a zip file (suffix `.wbc`) holding `manifest.json` plus the files it lists, each with its
SHA-256. It is read in memory: nothing is unpickled, and `unpack` refuses member names that would
land outside the target folder. Every member's checksum is verified on open.

Members (names are the contract; optional ones may be absent):
    spec.json                 the ModelSpec
    model.<precision>.onnx    one graph per precision: the table in `wbc_edge.precisions`
    calibration.json          calibration-set manifest (cell ids, class counts, content hash)
    accuracy.json             the accuracy gate's report per precision (schema: `wbc_edge.gate_report`)
    quantification.json       temperatures, training prior, held-out confusion per precision
                              (the differential estimate, wbc_edge.runtime.quantify; absent in
                              older bundles: the runtime then reports argmax counts only)
    weights.npz               the trained state_dict as NumPy arrays (no pickle): PyTorch baselines
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from wbc_edge import precisions
from wbc_edge.errors import BundleError, SpecError
from wbc_edge.spec import ModelSpec

BUNDLE_SCHEMA = 1
MANIFEST = "manifest.json"
WEIGHTS_MEMBER = "weights.npz"
PRECISION_MEMBERS = precisions.MEMBERS


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file read in chunks (a bundle's identity in results headers and LIS messages)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _safe_member_name(name: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or name.startswith("/") or ":" in name:
        raise BundleError(f"bundle member '{name}': unsafe name (absolute or leaves the bundle)")
    return str(p)


def write_bundle(path: str | os.PathLike, spec: ModelSpec, files: Mapping[str, bytes], meta: Mapping[str, Any] | None = None) -> Path:
    """Write a bundle atomically: a killed export leaves the previous bundle, never a half-written one."""
    from wbc_edge import __version__

    members: dict[str, bytes] = {"spec.json": spec.to_json().encode()}
    for name, data in files.items():
        members[_safe_member_name(name)] = data
    manifest = {
        "bundle_schema": BUNDLE_SCHEMA,
        "wbc_edge_version": __version__,
        "files": {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in sorted(members.items())},
        "meta": dict(meta or {}),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        for name, data in sorted(members.items()):
            zf.writestr(name, data)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def rewrite_bundle(bundle: "Bundle", files: Mapping[str, bytes], out: str | os.PathLike | None = None) -> Path:
    """The bundle again with `files` added or replaced (atomically, in place unless `out`)."""
    members = {n: d for n, d in bundle._members.items() if n != "spec.json"}
    members.update(files)
    path = write_bundle(out or bundle.path, bundle.spec, members, bundle.manifest.get("meta"))
    Bundle.open(path)  # read back: checksums verified
    return path


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    spec: ModelSpec
    _members: dict[str, bytes]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        path = Path(path)
        where = f"bundle {path}"
        if not path.is_file():
            raise BundleError(f"{where}: no such file")
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if MANIFEST not in names:
                    raise BundleError(f"{where}: no {MANIFEST} (not a wbc-edge bundle?)")
                manifest = json.loads(zf.read(MANIFEST))
                members = {}
                for name, entry in manifest.get("files", {}).items():
                    _safe_member_name(name)
                    if name not in names:
                        raise BundleError(f"{where}: member '{name}' listed in the manifest is missing (truncated?)")
                    data = zf.read(name)
                    if sha256_bytes(data) != entry.get("sha256"):
                        raise BundleError(f"{where}: member '{name}' fails its SHA-256 check (tampered or corrupt)")
                    members[name] = data
        except (zipfile.BadZipFile, zlib.error) as e:  # zlib.error: flipped bytes inside a deflated member
            raise BundleError(f"{where}: not a readable zip ({e}; truncated or corrupt?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{where}: {MANIFEST} is not valid JSON ({e})") from None
        except (zipfile.LargeZipFile, OSError, EOFError) as e:
            raise BundleError(f"{where}: cannot read ({e})") from None
        if manifest.get("bundle_schema") != BUNDLE_SCHEMA:
            raise BundleError(f"{where}: bundle schema {manifest.get('bundle_schema')!r}, this wbc-edge reads {BUNDLE_SCHEMA}")
        if "spec.json" not in members:
            raise BundleError(f"{where}: no spec.json")
        try:
            spec = ModelSpec.from_json(members["spec.json"].decode())
        except SpecError as e:
            raise BundleError(f"{where}: {e}") from None
        return cls(path=path, manifest=manifest, spec=spec, _members=members)

    @property
    def members(self) -> list[str]:
        return sorted(self._members)

    def has(self, name: str) -> bool:
        return name in self._members

    def read(self, name: str) -> bytes:
        if name not in self._members:
            raise BundleError(f"bundle {self.path}: no member '{name}' (has {self.members})")
        return self._members[name]

    def read_json(self, name: str) -> Any:
        return json.loads(self.read(name))

    @property
    def precisions(self) -> list[str]:
        return [p for p, m in PRECISION_MEMBERS.items() if m in self._members]

    def model_bytes(self, precision: str = "fp32") -> bytes:
        if precision not in PRECISION_MEMBERS:
            raise BundleError(f"precision '{precision}' is not one of {list(PRECISION_MEMBERS)}")
        return self.read(PRECISION_MEMBERS[precision])

    def member_sha256(self, name: str) -> str:
        return self.manifest["files"][name]["sha256"]

    def unpack(self, dest: str | os.PathLike) -> Path:
        """Write every member under `dest` (names were checked to stay inside it)."""
        dest = Path(dest).resolve()
        for name, data in self._members.items():
            target = (dest / _safe_member_name(name)).resolve()
            if dest not in target.parents:
                raise BundleError(f"bundle member '{name}': would be written outside {dest}")
            atomic_write_bytes(target, data)
        atomic_write_text(dest / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))
        return dest
