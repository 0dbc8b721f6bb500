"""The precision table is the one list every stage reads."""
import pytest

from wbc_edge import precisions
from wbc_edge.bundle import PRECISION_MEMBERS
from wbc_edge.errors import UsageError


def test_every_reader_takes_its_names_from_the_table():
    from wbc_edge.bench.run import BACKEND_PRECISIONS
    from wbc_edge.cli.run import get_args_parser
    from wbc_edge.runtime.backends import tensorrt_build as trtx
    from wbc_edge.runtime.backends import PRECISIONS as RUNTIME_CHOICES

    assert PRECISION_MEMBERS == {p.name: p.member for p in precisions.PRECISIONS}
    assert RUNTIME_CHOICES == precisions.CHOICES
    action = next(a for a in get_args_parser()._actions if a.dest == "precision")
    assert tuple(action.choices) == precisions.CHOICES
    assert trtx.PRECISIONS == ("fp32", "fp16", "int8")
    assert set(BACKEND_PRECISIONS["onnxruntime"]) == {"fp32", "int8-trt", "int8-cpu"}


def test_names_resolve_per_backend_and_engine():
    assert precisions.resolve("int8", "tensorrt") == "int8-trt"
    assert precisions.resolve("int8", "onnxruntime") == "int8-cpu"
    assert precisions.resolve("auto", "tensorrt") == "auto"
    assert precisions.engine_precision("int8-trt") == precisions.engine_precision("int8") == "int8"
    assert precisions.engine_member("int8") == "model.int8-trt.onnx"
    with pytest.raises(UsageError, match="TensorRT does not build it"):
        precisions.engine_precision("int8-cpu")
    with pytest.raises(UsageError, match="'bf16': not one of"):
        precisions.resolve("bf16", "onnxruntime")
