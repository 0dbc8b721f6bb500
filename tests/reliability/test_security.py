"""Security basics, checked on the source itself (so a new call site cannot slip in): checkpoints load
with weights_only=True, nothing is unpickled, no shell strings, subprocesses get argument lists,
and the zip reader never extracts by name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wbc_edge

PACKAGE = Path(wbc_edge.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def test_the_scan_sees_the_package():
    assert len(SOURCES) > 30 and any(p.name == "checkpoint.py" for p in SOURCES)


def test_every_torch_load_uses_weights_only_true():
    loads, bad = [], []
    for path in SOURCES:
        for call in _calls(path):
            if _name(call.func) == "torch.load":
                loads.append(_where(path, call))
                value = _kw(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    bad.append(_where(path, call))
    assert loads, "no torch.load found: the scan is broken"
    assert bad == [], f"torch.load without weights_only=True at {bad}"


def test_nothing_is_unpickled():
    bad = []
    for path in SOURCES:
        for call in _calls(path):
            name = _name(call.func)
            if name.startswith(("pickle.", "cPickle.", "dill.", "joblib.load", "marshal.load")) or name in ("pickle.loads", "Unpickler"):
                bad.append(f"{_where(path, call)} {name}")
            if name.endswith(("np.load", "numpy.load")):
                allow = _kw(call, "allow_pickle")
                if not (isinstance(allow, ast.Constant) and allow.value is False):
                    bad.append(f"{_where(path, call)} np.load without allow_pickle=False")
    assert bad == []


def test_no_shell_strings():
    bad = []
    for path in SOURCES:
        for call in _calls(path):
            name = _name(call.func)
            builtin = isinstance(call.func, ast.Name) and name in ("eval", "exec")  # not model.eval()
            if builtin or name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                bad.append(f"{_where(path, call)} {name}")
            shell = _kw(call, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                bad.append(f"{_where(path, call)} shell=")
            if name.startswith("subprocess.") and call.args and isinstance(call.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                bad.append(f"{_where(path, call)} {name} with a command string")
    assert bad == []


def test_zips_are_read_by_member_never_extracted():
    bad = []
    for path in SOURCES:
        for call in _calls(path):
            if _name(call.func).endswith(("extractall", "extract")) and "zip" in path.read_text():
                bad.append(_where(path, call))
    assert bad == []


@pytest.mark.parametrize("payload", ["import os; os.system('touch PWNED')", "__import__('os').system('x')"])
def test_bundle_spec_and_manifest_are_data_not_code(tmp_path, payload):
    """A bundle whose JSON carries code is parsed as data: the code never runs, the open fails or ignores it."""
    import io
    import json
    import zipfile

    from wbc_edge.bundle import Bundle, sha256_bytes
    from wbc_edge.errors import BundleError

    spec = payload.encode()
    manifest = json.dumps({"bundle_schema": 1, "files": {"spec.json": {"sha256": sha256_bytes(spec)}}}).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", manifest)
        zf.writestr("spec.json", spec)
    (tmp_path / "b.wbc").write_bytes(buf.getvalue())
    with pytest.raises(BundleError):
        Bundle.open(tmp_path / "b.wbc")
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
