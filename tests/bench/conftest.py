"""A tiny real bundle for the harness tests: a 32 px ShuffleNetV2-x0.5 MM-MIMO (random weights),
exported to ONNX FP32, quantized to the CPU Q/DQ variant, with its weights as `weights.npz`."""
from __future__ import annotations

import io

import numpy as np
import pytest

from wbc_edge.bundle import write_bundle
from wbc_edge.spec import MODALITIES, spec_for

SIZE = 32


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from wbc_edge.calibration import CalibrationSet
    from wbc_edge.export.onnx_export import export_onnx_bytes
    from wbc_edge.export.quantize import Quantizer
    from wbc_edge.train.models import create_model

    torch.manual_seed(0)
    spec = spec_for("mimo", MODALITIES, backbone="shufflenet_v2_x0_5", input_size=SIZE)
    model = create_model(spec).eval()
    fp32 = export_onnx_bytes(model, spec)
    rng = np.random.default_rng(0)
    calib_inputs = rng.integers(0, 256, spec.input_shape(16), dtype=np.uint8)
    calib = CalibrationSet(inputs=calib_inputs, input_name=spec.input_name, cell_ids=[f"c{i}" for i in range(16)],
                           labels=[None] * 16)
    root = tmp_path_factory.mktemp("bench_bundle")
    with Quantizer(fp32, calib, "minmax", root / "cache") as quantizer:
        int8_cpu = quantizer.quantize("cpu").onnx_bytes
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    path = write_bundle(root / "tiny.wbc", spec, {"model.fp32.onnx": fp32, "model.int8-cpu.onnx": int8_cpu,
                                                  "weights.npz": buf.getvalue()})
    return path


@pytest.fixture(scope="session")
def cells_dir(tmp_path_factory):
    from wbc_edge.synth import write_cells

    root = tmp_path_factory.mktemp("bench_cells")
    write_cells(root, n=12, seed=3, size=40)
    return root


@pytest.fixture(scope="session")
def bench_run(tiny_bundle, cells_dir, tmp_path_factory):
    """One whole harness run on the tiny bundle with few rounds: what most tests read."""
    from wbc_edge.bench import BenchOptions, run_bench, write_report

    out = tmp_path_factory.mktemp("bench_out")
    opts = BenchOptions(model=tiny_bundle, batches=(1, 8), rounds=4, warmup=1, data=cells_dir, sets=2, out=out,
                        pipeline_repeats=1, cold_start_repeats=1,
                        threads=1)  # one thread: the shared 2-core CI machine stays usable
    report = run_bench(opts)
    json_path, md_path = write_report(report, out)
    return report, json_path, md_path
