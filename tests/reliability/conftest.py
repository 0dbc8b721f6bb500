"""Fixtures for the reliability tests: the runtime tests' tiny ONNX model (loaded from their conftest
by path, so both folders test the same graph) in a bundle sized for the simulated camera."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from wbc_edge.bundle import write_bundle
from wbc_edge.spec import spec_for

RUNTIME_CONFTEST = Path(__file__).parent.parent / "runtime" / "conftest.py"


def _runtime_fakes():
    name = "reliability_runtime_fakes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, RUNTIME_CONFTEST)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def fakes():
    return _runtime_fakes()


@pytest.fixture(scope="session")
def tiny_spec():
    return spec_for("mimo", input_size=16)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_spec, fakes):
    """A real bundle (fp32 ONNX graph whose outputs NumPy recomputes) for the simulated camera."""
    model = fakes.tiny_onnx(tiny_spec, fakes.tiny_weights(tiny_spec))
    accuracy = {"precisions": {"fp32": {"passed": True}}}
    return write_bundle(tmp_path_factory.mktemp("bundle") / "tiny.wbc", tiny_spec,
                        {"model.fp32.onnx": model, "accuracy.json": json.dumps(accuracy).encode()})


def _strict_json(line: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="session")
def strict_json():
    """json.loads that refuses NaN/Infinity (not JSON, and a silently wrong probability)."""
    return _strict_json
