import numpy as np
import onnx
import onnxruntime as ort

from wbc_edge.export.onnx_export import export_onnx, parity, read_spec_metadata, torch_probs


def test_torch_vs_onnx_fp32_parity_on_real_cells(trained_model, spec, fp32_bytes, val_data):
    inputs, _ = val_data
    report = parity(trained_model, spec, fp32_bytes, inputs)
    assert report["n"] == len(inputs)
    assert report["max_abs_diff_probs"] < 1e-4
    assert report["max_abs_diff_head_probs"] < 1e-4
    assert report["argmax_agreement"] == 1.0


def test_graph_contract_dynamic_batch_and_spec_metadata(trained_model, spec, fp32_bytes, val_data, tmp_path):
    model = onnx.load_from_string(fp32_bytes)
    assert [i.name for i in model.graph.input] == [spec.input_name]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == [spec.probs_name, spec.head_probs_name]
    assert read_spec_metadata(fp32_bytes) == spec
    sess = ort.InferenceSession(fp32_bytes, providers=["CPUExecutionProvider"])
    inputs, _ = val_data
    for n in (1, 5):
        probs, heads = sess.run(None, {spec.input_name: inputs[:n]})
        assert probs.shape == (n, spec.num_classes) and heads.shape == (n, spec.num_heads, spec.num_classes)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, heads.mean(1), atol=1e-6)  # head average inside the graph
    # The normalisation is inside: the torch reference on the same uint8 cells agrees.
    ref, _ = torch_probs(trained_model, spec, inputs[:5])
    np.testing.assert_allclose(sess.run(None, {spec.input_name: inputs[:5]})[0], ref, atol=1e-4)


def test_export_onnx_writes_a_checked_file(trained_model, spec, tmp_path):
    path = export_onnx(trained_model, spec, tmp_path / "m.onnx", simplify=False)
    onnx.checker.check_model(str(path))
    assert read_spec_metadata(path.read_bytes()) == spec
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
