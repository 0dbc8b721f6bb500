import json

import numpy as np
import pytest

from wbc_edge.errors import SpecError
from wbc_edge.preprocess import cell_to_input, missing_fill_value, normalise
from wbc_edge.spec import CLASSES, MODALITIES, ModelSpec, spec_for


@pytest.mark.parametrize("method", ["early", "late", "mimo"])
def test_json_round_trip_keeps_every_field(method):
    spec = spec_for(method, input_size=64, provenance={"data": "abc", "epochs": 3})
    back = ModelSpec.from_json(spec.to_json())
    assert back == spec
    assert back.provenance == {"data": "abc", "epochs": 3}
    assert back.to_dict() == spec.to_dict()


def test_heads_follow_method():
    assert spec_for("mimo").heads == MODALITIES
    assert spec_for("late").num_heads == 4
    assert spec_for("early").heads == ("fused",)
    single = spec_for("single", modalities=("color3",))
    assert single.in_channels == 3 and single.heads == ("color3",)
    assert spec_for("mimo").in_channels == 12 and spec_for("mimo").num_classes == len(CLASSES)


@pytest.mark.parametrize(
    "field, value",
    [
        ("method", "bagging"),
        ("input_size", 3),
        ("classes", ["a"]),
        ("channel_layout", "interleaved"),
        ("schema_version", 99),
        ("heads", ["fused"]),
        ("std", [[1, 1, 0]] * 4),
        ("mean", [[1, 1, 1]] * 3),
        ("bogus", 1),
    ],
)
def test_validation_names_the_bad_field(field, value):
    d = spec_for("mimo").to_dict()
    d[field] = value
    with pytest.raises(SpecError) as e:
        ModelSpec.from_dict(d)
    assert f"'{field}'" in str(e.value)
    assert "\n" not in str(e.value)


def test_from_json_rejects_garbage_in_one_line():
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_json("{nope")
    d = spec_for("mimo").to_dict()
    del d["schema_version"]
    with pytest.raises(SpecError, match="schema_version"):
        ModelSpec.from_json(json.dumps(d))


def test_cell_to_input_is_modality_major_and_fills_missing_lights_with_the_mean():
    spec = spec_for("mimo", input_size=16, mean=((10, 20, 30), (1, 2, 3), (4, 5, 6), (7, 8, 9)))
    rng = np.random.default_rng(0)
    imgs = {m: rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for m in MODALITIES}
    imgs["color2"] = None
    x = cell_to_input(imgs, spec)
    assert x.shape == (12, 16, 16) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[0:3], imgs["fluorescent"].transpose(2, 0, 1))
    np.testing.assert_array_equal(x[9:12], imgs["color3"].transpose(2, 0, 1))
    np.testing.assert_array_equal(x[6:9, 0, 0], missing_fill_value(spec, 2))
    # a missing light is zero once normalised: the network sees "no evidence"
    z = normalise(x[None], spec)[0]
    assert np.abs(z[6:9]).max() == 0.0


def test_cell_to_input_centre_crops_and_resizes():
    spec = spec_for("single", modalities=("rgb",), input_size=16)
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 10:50] = 200  # the centred 40x40 square
    x = cell_to_input({"rgb": img}, spec)
    assert x.shape == (3, 16, 16)
    assert x.min() == 200


def test_one_input_size_range_for_the_spec_training_and_the_cli():
    from wbc_edge.cli.train import main as train_main
    from wbc_edge.spec import INPUT_SIZE_RANGE
    from wbc_edge.train.config import TrainConfig

    lo, hi = INPUT_SIZE_RANGE
    for size in (lo - 1, hi + 1):
        with pytest.raises(SpecError, match=f"in {lo}..{hi}"):
            spec_for("mimo", input_size=size)
        with pytest.raises(SpecError, match=f"in {lo}..{hi}"):
            TrainConfig(img_size=size).validate()
        with pytest.raises(SystemExit) as e:  # refused at parse time, one line
            train_main(["complexity", "--img-size", str(size)])
        assert e.value.code == 2
    spec_for("mimo", input_size=lo)
    TrainConfig(img_size=lo).validate()
