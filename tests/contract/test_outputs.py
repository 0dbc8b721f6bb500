"""The output guard: an output never replaces an input, another output, or a file of another kind."""
import json
import os

import pytest

from wbc_edge.bundle import write_bundle
from wbc_edge.errors import UsageError
from wbc_edge.outputs import Input, Output, check_paths
from wbc_edge.spec import spec_for


@pytest.fixture
def files(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "000000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"record": "run", "classes": []}) + "\n" + json.dumps({"record": "cell"}) + "\n")
    bundle = write_bundle(tmp_path / "m.wbc", spec_for("mimo", input_size=32), {"model.fp32.onnx": b"x"})
    return {"frames": frames, "results": results, "bundle": bundle, "tmp": tmp_path}


def refused(outputs, inputs=(), match=""):
    with pytest.raises(UsageError, match=match) as e:
        check_paths(outputs, inputs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_an_output_never_replaces_an_input(files):
    frame = files["frames"] / "000000.png"
    refused([Output("--report", frame, "report")], [Input("SOURCE", frame)], "same file as input SOURCE")
    refused([Output("--report", files["frames"] / "r.html", "report")], [Input("SOURCE", files["frames"], untouchable_tree=True)],
            "inside input folder")
    link = files["tmp"] / "link.wbc"
    os.symlink(files["bundle"], link)
    refused([Output("--out", link, "results")], [Input("--model", files["bundle"])], "same file as input --model")
    hard = files["tmp"] / "hard.wbc"
    os.link(files["bundle"], hard)
    refused([Output("--out", hard, "bundle")], [Input("--checkpoint", files["bundle"])], "same file as input")


def test_two_outputs_never_share_a_file(files):
    refused([Output("--out", files["results"], "results"), Output("--report", files["results"], "report")], (),
            "same file as output --out")


def test_an_existing_file_of_another_kind_is_not_overwritten(files):
    refused([Output("--report", files["results"], "report")], (), "not a wbc-edge HTML report")
    refused([Output("--out", files["results"], "bundle")], (), "not a wbc-edge bundle")
    refused([Output("--out", files["bundle"], "results")], (), "not a wbc-run results file")
    refused([Output("--json", files["results"], "json")], (), "not a JSON file")
    # Files of its own kind, and empty files, are fine to replace (or, for results, to append to).
    check_paths([Output("--out", files["bundle"], "bundle"), Output("--out2", files["results"], "results")])
    empty = files["tmp"] / "empty.html"
    empty.touch()
    check_paths([Output("--report", empty, "report")])


def test_unwritable_places_fail_before_any_work(files):
    tmp = files["tmp"]
    refused([Output("--report", tmp, "report")], (), "is a folder")
    refused([Output("--save-video", files["results"] / "v.mp4", "video")], (), "is a file, so no folder")
    refused([Output("--out", files["results"], "dir")], (), "is a file, not a folder")
    refused([Output("--out", files["frames"], "dir", must_not_exist=True)], (), "not empty")
    check_paths([Output("--save-video", tmp / "new" / "deeper" / "v.mp4", "video")])  # parents are created
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp / "locked"
        locked.mkdir(mode=0o500)
        refused([Output("--report", locked / "r.html", "report")], (), "not writable")


def test_a_report_written_by_the_runtime_is_recognised_as_one(tmp_path):
    from wbc_edge.runtime.report import write_report
    from wbc_edge.runtime.results import Differential, RunSummary

    d = Differential(["neutrophil", "lymphocyte"])
    path = tmp_path / "r.html"
    write_report(path, RunSummary.from_differential(d), {})
    check_paths([Output("--report", path, "report")])
