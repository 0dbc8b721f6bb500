"""What a command writes, checked before it starts: never over an input, another output, or a stranger's file.

Every command lists its inputs and outputs and calls `check_paths` before any work. An output is
refused (one line, a `UsageError`) when it is the same file as an input or another output (also
through symbolic or hard links), lies inside an input folder that must stay untouched (camera
frames, a dataset), exists but is not of the kind the command writes (a bundle over a results file,
a report over a camera frame), or cannot be written (a folder in its place, an unwritable or
non-folder parent). Torch-free: the runtime's library calls use it too.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from wbc_edge.errors import UsageError

REPORT_MARKER = '<meta name="generator" content="wbc-edge">'


def _is_bundle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return "manifest.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _first_line(path: Path, limit: int = 1 << 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit).split(b"\n", 1)[0]


def _is_results(path: Path) -> bool:
    try:
        line = _first_line(path).strip()
        return not line or json.loads(line).get("record") == "run"
    except (OSError, ValueError, AttributeError):
        return False


def _is_report(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    # Reports from before the generator tag carry the research-tool note in their first lines.
    return REPORT_MARKER in head or (head.startswith("<!DOCTYPE html>") and "four-light MM-MIMO classifier" in head)


def _is_json(path: Path) -> bool:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return not (isinstance(value, dict) and "record" in value)  # a results file holding its header alone


_VIDEO_MAGIC = (b"RIFF", b"\x1aE\xdf\xa3")  # AVI, Matroska; MP4 has 'ftyp' at offset 4


def _is_video(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" or head.startswith(_VIDEO_MAGIC)


def _is_engine(path: Path) -> bool:
    return path.with_name(path.name + ".json").is_file()  # wbc-engine writes a sidecar beside each engine


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def _is_empty(path: Path) -> bool:
    return path.stat().st_size == 0


# kind -> (what it is called in messages, test that an existing file is one)
KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "bundle": ("wbc-edge bundle (.wbc)", _is_bundle),
    "results": ("wbc-run results file", _is_results),
    "report": ("wbc-edge HTML report", _is_report),
    "json": ("JSON file", _is_json),
    "video": ("video file", _is_video),
    "engine": ("TensorRT engine written by wbc-engine (FILE.json beside it)", _is_engine),
    "outbox": ("SQLite outbox", _is_sqlite),
}


@dataclass(frozen=True)
class Output:
    flag: str  # how the user named it: '--report', '--out'
    path: str | os.PathLike
    kind: str  # a KINDS key, or 'dir' for a folder the command fills
    must_not_exist: bool = False  # folders a command creates fresh (frames, cell sets)


@dataclass(frozen=True)
class Input:
    flag: str
    path: str | os.PathLike
    untouchable_tree: bool = False  # a folder nothing may be written into (frames, a dataset)


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _check_writable(out: Output, real: Path) -> None:
    where = f"{out.flag} {out.path}"
    if out.kind == "dir":
        if real.exists() and not real.is_dir():
            raise UsageError(f"{where}: is a file, not a folder")
        if out.must_not_exist and real.is_dir() and any(real.iterdir()):
            raise UsageError(f"{where}: folder exists and is not empty; give a new folder")
    elif real.is_dir():
        raise UsageError(f"{where}: is a folder; give a file name")
    parent = real if out.kind == "dir" and real.is_dir() else real.parent
    while not parent.exists():  # folders the command will create
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{where}: {parent} is a file, so no folder can be made there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{where}: folder {parent} is not writable")
    if real.is_file() and not os.access(real, os.W_OK):
        raise UsageError(f"{where}: file is not writable")


def check_paths(outputs: Iterable[Output], inputs: Iterable[Input] = ()) -> None:
    """Refuse, before any work, every output that would destroy an input, another output or a foreign file."""
    outs = [o for o in outputs if o.path is not None and os.fspath(o.path) != ""]
    ins = [i for i in inputs if i.path is not None and os.fspath(i.path) != ""]
    seen: list[tuple[Output, Path]] = []
    for out in outs:
        real = _real(out.path)
        where = f"{out.flag} {out.path}"
        for inp in ins:
            in_real = _real(inp.path)
            if _same_file(real, in_real):
                raise UsageError(f"{where}: is the same file as input {inp.flag} {inp.path}; refusing to overwrite an input")
            if inp.untouchable_tree and in_real.is_dir() and _inside(real, in_real):
                raise UsageError(f"{where}: lies inside input folder {inp.flag} {inp.path}; write it elsewhere")
            if out.kind == "dir" and in_real.exists() and _inside(in_real, real) and out.must_not_exist:
                raise UsageError(f"{where}: input {inp.flag} {inp.path} lies inside this output folder")
        for other, other_real in seen:
            if _same_file(real, other_real):
                raise UsageError(f"{where}: is the same file as output {other.flag} {other.path}; give each output its own path")
        seen.append((out, real))
        _check_writable(out, real)
        if out.kind != "dir" and real.is_file() and not _is_empty(real):
            name, test = KINDS[out.kind]
            if not test(real):
                raise UsageError(f"{where}: exists and is not a {name}; refusing to overwrite it")



def source_input(flag: str, uri: str | None) -> Input | None:
    """A frame source as an input when it is local (a frames folder, a video, an image): nothing
    may be written over or into it. Cameras and synthetic:// have no path to protect."""
    if not uri:
        return None
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if "://" in path or path.startswith(("gst:", "/dev/")) or not os.path.exists(path):
        return None
    return Input(flag, path, untouchable_tree=True)
