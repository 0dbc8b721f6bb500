import json
import shutil

import numpy as np
import pytest

from wbc_edge.bundle import Bundle
from wbc_edge.cli import calib as calib_cli
from wbc_edge.cli import export as export_cli
from wbc_edge.errors import BundleError
from support.sabotage import sabotage_quantizer


@pytest.fixture(scope="module")
def good_bundle(run_dir, tmp_path_factory, split):
    """wbc-calib select, then wbc-export with every precision from that calibration set."""
    out = tmp_path_factory.mktemp("bundle")
    assert calib_cli.main(["select", "--run", str(run_dir), "--fold", "0", "--size", "48", "--out", str(out / "calib")]) == 0
    rc = export_cli.main(["--run", str(run_dir), "--out", str(out / "model.wbc"), "--int8", "--fp16",
                          "--calib", str(out / "calib"), "--cache-dir", str(out / "cache"), "--max-drop", "100",
                          "--report", str(out / "export.html")])
    assert rc == 0
    return out / "model.wbc"


def test_export_writes_a_verified_bundle_with_every_precision(good_bundle, split, spec, capsys):
    bundle = Bundle.open(good_bundle)
    assert bundle.spec == spec
    assert set(bundle.precisions) == {"fp32", "fp16", "int8-trt", "int8-cpu"}
    parity = bundle.read_json("parity.json")
    assert parity["max_abs_diff_probs"] < 1e-4 and parity["argmax_agreement"] == 1.0
    calib = bundle.read_json("calibration.json")
    assert len(calib["cell_ids"]) == 48 and set(calib["cell_ids"]) <= set(split["train"])
    assert calib["int8"]["int8-trt"]["tensorrt_qdq_violations"] == []
    accuracy = bundle.read_json("accuracy.json")
    assert accuracy["n_cells"] == len(split["val"])
    for precision in bundle.precisions:
        row = accuracy["precisions"][precision]
        assert row["passed"] is True and "agreement_with_fp32" in row and set(row["per_class_recall"]) == set(spec.classes)


def test_strict_gate_fails_and_leaves_the_good_bundle_untouched(good_bundle, run_dir, tmp_path, capsys, monkeypatch):
    # INT8 that disagrees with FP32 on every cell by construction, so the gate fails on any CPU.
    sabotage_quantizer(monkeypatch)
    target = tmp_path / "model.wbc"
    shutil.copy(good_bundle, target)
    before = target.read_bytes()
    rc = export_cli.main(["--run", str(run_dir), "--out", str(target), "--int8", "--int8-variant", "trt", "--calib-size", "32",
                          "--min-agreement", "50", "--no-fallback", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and "accuracy gate: int8-trt" in err and "no bundle written" in err
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "model.wbc"]  # no temp or partial files


def test_corrupted_bundles_are_rejected(good_bundle, tmp_path, capsys, dataset_dir):
    data = bytearray(good_bundle.read_bytes())
    flipped = tmp_path / "flipped.wbc"
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    flipped.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.wbc"
    truncated.write_bytes(good_bundle.read_bytes()[: len(data) * 2 // 3])
    for bad in (flipped, truncated):
        with pytest.raises(BundleError):
            Bundle.open(bad)
        assert export_cli.main(["compare", "--bundle", str(bad), "--data", str(dataset_dir)]) == 2
        assert "wbc-export compare: bundle" in capsys.readouterr().err


def test_compare_reports_every_precision_of_a_bundle(good_bundle, dataset_dir, tmp_path, capsys):
    rc = export_cli.main(["compare", "--bundle", str(good_bundle), "--data", str(dataset_dir), "--max-drop", "100",
                          "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["precisions"]) == {"fp32", "fp16", "int8-trt", "int8-cpu"}
    assert all(p in out for p in report["precisions"])


def test_user_mistakes_are_one_line_errors(run_dir, tmp_path, capsys):
    checkpoint = run_dir / "folds" / "fold0" / "mimo-kd" / "model.pt"
    lone = tmp_path / "lone" / "x" / "model.pt"
    lone.parent.mkdir(parents=True)
    shutil.copy(checkpoint, lone)
    assert export_cli.main(["--checkpoint", str(lone), "--out", str(tmp_path / "m.wbc"), "--int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "split.json" in err
    assert export_cli.main(["--run", str(run_dir), "--fold", "3", "--out", str(tmp_path / "m.wbc")]) == 2
    assert "fold3" in capsys.readouterr().err
    assert export_cli.main(["--run", str(run_dir), "--out", str(tmp_path / "m.wbc"), "--int8", "--int8-variant", "gpu"]) == 2
    assert "--int8-variant 'gpu'" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert export_cli.main(["--run", str(run_dir), "--out", str(tmp_path / "m.wbc"), "--engine", "fp16"]) == 2
        assert "tensorrt: not importable" in capsys.readouterr().err
    assert not (tmp_path / "m.wbc").exists()


def test_fallback_keeps_sensitive_layers_in_float(fp32_bytes, spec, val_data, dataset, split, monkeypatch):
    from wbc_edge.calibration import select_calibration_set
    from wbc_edge.export import pipeline
    from wbc_edge.export.pipeline import ExportOptions, quantize_with_fallback
    from wbc_edge.export.quantize import Quantizer, first_and_last_compute_nodes

    monkeypatch.setattr(pipeline, "FALLBACK_STEPS", (3,))
    fp32 = fp32_bytes
    calib = select_calibration_set(dataset, split["train"], spec, size=32)
    inputs, labels = val_data
    messages = []
    with Quantizer(fp32, calib) as q:
        # An impossible goal walks the whole fallback plan, keeping ever more layers in float.
        _, record = quantize_with_fallback(q, "trt", fp32, spec, inputs, labels, ExportOptions(out=None, max_drop=-100), messages.append)
        first_last = first_and_last_compute_nodes(q.model)
    kept = [a["kept_float"] for a in record["attempts"]]
    assert kept[0] == [] and set(first_last) <= set(kept[1])
    assert all(set(a) < set(b) for a, b in zip(kept, kept[1:]))
    assert record["kept_float"] == kept[-1] and len(messages) == len(kept) - 1
    assert all(np.isfinite(a["weighted_f1_drop"]) for a in record["attempts"])


def test_calib_capture_cli_writes_a_set_for_the_bundle(good_bundle, tmp_path, capsys):
    rc = calib_cli.main(["capture", "--source", "synthetic://?seed=5", "--sets", "2", "--bundle", str(good_bundle),
                         "--crop-px", "48", "--out", str(tmp_path / "cap")])
    assert rc == 0
    from wbc_edge.calibration import CalibrationSet

    calib = CalibrationSet.load(tmp_path / "cap")
    calib.check_spec(Bundle.open(good_bundle).spec)
    assert calib.source["sets_read"] == 2 and len(calib) > 0
    assert calib_cli.main(["capture", "--source", "/no/such/folder", "--sets", "2", "--bundle", str(good_bundle), "--out", str(tmp_path / "x")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_export_writes_quantification_measured_on_the_held_out_cells(good_bundle, split, spec, dataset, capsys):
    from wbc_edge.calibration import labels_in_spec_order
    from wbc_edge.calibration.sets import indices_for_ids
    from wbc_edge.export.gate import run_onnx
    from wbc_edge.runtime.quantify import apply_temperature, params_for_bundle, pool_heads

    bundle = Bundle.open(good_bundle)
    quant = bundle.read_json("quantification.json")
    train = labels_in_spec_order(dataset, indices_for_ids(dataset, split["train"], "train"), spec)
    np.testing.assert_allclose(quant["train_prior"], np.bincount(train, minlength=spec.num_classes) / len(train))
    assert set(quant["precisions"]) == set(bundle.precisions)
    assert set(quant["temperature"]["heads"]) == set(spec.heads) and quant["temperature"]["combined"] > 0
    # the confusion counts are the calibrated argmax against the validation labels, recomputed here
    val_idx = indices_for_ids(dataset, split["val"], "val")
    from wbc_edge.calibration import inputs_from_dataset

    labels = labels_in_spec_order(dataset, val_idx, spec)
    heads = run_onnx(bundle.model_bytes("int8-cpu"), spec, inputs_from_dataset(dataset, val_idx, spec))[spec.head_probs_name]
    assert quant["pooling"] == "log-mean"  # the export's default: the heads' geometric mean
    expected = np.zeros((spec.num_classes,) * 2, int)
    np.add.at(expected, (labels, apply_temperature(pool_heads(heads, "log-mean"), quant["temperature"]["combined"]).argmax(1)), 1)
    assert quant["precisions"]["int8-cpu"]["confusion"] == expected.tolist()
    # BCTS minimises the NLL of the pooled rows, and T = 1, b = 0 is among its choices: never worse after
    assert quant["fit"]["n_cells"] == len(split["val"]) and quant["fit"]["nll_after"] <= quant["fit"]["nll_before"] + 1e-9
    accuracy = bundle.read_json("accuracy.json")
    assert accuracy["calibration"]["ece_after"]["fp32"] == quant["precisions"]["fp32"]["ece_after"]
    assert params_for_bundle(bundle, "fp16").measured_precision == "fp16"


def test_quantify_adds_the_member_to_an_existing_bundle_atomically(good_bundle, dataset_dir, tmp_path, capsys):
    old = tmp_path / "old.wbc"
    shutil.copy(good_bundle, old)
    b = Bundle.open(old)
    from wbc_edge.bundle import write_bundle

    write_bundle(old, b.spec, {n: b.read(n) for n in b.members if n not in ("spec.json", "quantification.json")}, b.manifest["meta"])
    assert not Bundle.open(old).has("quantification.json")
    assert export_cli.main(["quantify", "--bundle", str(old), "--data", str(dataset_dir), "--train-prior", "paper"]) == 0
    assert "ECE" in capsys.readouterr().out
    new = Bundle.open(old)
    assert new.read_json("quantification.json")["fit"]["n_cells"] == len(list(dataset_dir.glob("*/*")))
    assert new.read("model.fp32.onnx") == b.read("model.fp32.onnx")
    assert export_cli.main(["quantify", "--bundle", str(old), "--data", str(dataset_dir), "--train-prior", "NEU=x"]) == 2
    assert "share 'x' is not a number" in capsys.readouterr().err


def test_export_report_shows_the_gate_and_the_calibration_with_its_reliability_diagrams(good_bundle, tmp_path, capsys):
    import re

    from wbc_edge.outputs import REPORT_MARKER

    bundle = Bundle.open(good_bundle)
    page = (good_bundle.parent / "export.html").read_text()  # written by wbc-export --report
    assert page.startswith("<!DOCTYPE html>") and REPORT_MARKER in page
    quant, gate = bundle.read_json("quantification.json"), bundle.read_json("accuracy.json")
    for precision, row in gate["precisions"].items():
        assert re.search(rf"<td>{precision}</td><td>{row['weighted_f1']:.2f}</td>", page)
    svgs = re.findall(r"<svg .*?</svg>", page, re.S)
    assert len(svgs) == 2 and f"before: ECE {100 * quant['fit']['ece_before']:.2f}%" in svgs[0]
    # one bar per non-empty confidence bin, its height the bin's accuracy
    assert svgs[1].count("<title>confidence") == len(quant["fit"]["reliability_after"])
    assert "the heads&#x27; geometric mean" in page
    # the same page from the bundle alone; refused over its own bundle, which is left as it was
    assert export_cli.main(["report", "--bundle", str(good_bundle), "--out", str(tmp_path / "r.html")]) == 0
    assert re.sub(r"written</td><td>[^<]*", "", (tmp_path / "r.html").read_text()) == re.sub(r"written</td><td>[^<]*", "", page)
    before = good_bundle.read_bytes()
    capsys.readouterr()
    assert export_cli.main(["report", "--bundle", str(good_bundle), "--out", str(good_bundle)]) == 2
    assert "same file as input --bundle" in capsys.readouterr().err and good_bundle.read_bytes() == before
