"""wbc-lis from a wbc-run results file: queue, status, send, replay, export; bad input is one line, exit 2."""
from __future__ import annotations

import json

import pytest

hl7 = pytest.importorskip("hl7")
pytest.importorskip("hl7apy")
pytest.importorskip("fhir.resources")

from wbc_edge.cli.lis import main  # noqa: E402
from wbc_edge.lis import Outbox  # noqa: E402
from wbc_edge.runtime.results import CellResult, ResultWriter  # noqa: E402

CLASSES = ["neutrophil", "lymphocyte", "eosinophil", "monocyte", "basophil"]


def results_file(path, sample=None, labels=None):
    """A results file as wbc-run writes it: header line, then one line per cell."""
    labels = labels or ["neutrophil"] * 130 + ["lymphocyte"] * 50 + ["eosinophil"] * 8 + ["monocyte"] * 10 + ["basophil"] * 2
    header = {"classes": CLASSES, "source": "synthetic://", "started": "2026-12-02T05:45:00Z",
              "instrument": {"software_version": "0.1.0", "model_sha256": "cd" * 32, "model_bundle": "m.wbc",
                             "device_serial": "SN-9"}}
    if sample:
        header["sample"] = sample
    with ResultWriter(path, header=header) as w:
        for i, label in enumerate(labels):
            w.write(CellResult(set_index=i // 4, cell_index=i % 4, time=1000.0 + i, box=(0, 0, 9, 9), label=label,
                               probability=0.9, probs={label: 0.9}, head_probs={"fluorescent": [0.9]}))
    return path


def run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out.strip().splitlines(), cap.err.strip().splitlines()


def test_queue_status_send_replay_export(tmp_path, capsys, listener):
    box = str(tmp_path / "o.sqlite")
    res = results_file(tmp_path / "r.jsonl", {"sample_id": "ACC-7", "patient_id": "MRN-7"})
    rc, out, _ = run(capsys, "--outbox", box, "queue", str(res))
    assert rc == 0 and "queued sample ACC-7" in out[0] and "(P, 200 cells" in out[0]
    (entry,) = Outbox(box).entries()
    assert entry.result.instrument["device_serial"] == "SN-9"
    assert [s.count for s in entry.result.shares] == [130, 50, 8, 10, 2]  # rebuilt from the cell lines
    rc, out, _ = run(capsys, "--outbox", box, "queue", str(res))  # the same result again: not a second message
    assert rc == 0 and f"already in {box} as {entry.control_id}" in out[0] and len(Outbox(box).entries()) == 1
    rc, out, _ = run(capsys, "--outbox", box, "status")
    assert rc == 0 and out[0].endswith("1 pending, 0 held, 0 sent") and entry.control_id in out[1]

    rc, out, _ = run(capsys, "--outbox", box, "export", "--out", str(tmp_path / "exp"), "--fhir")
    assert rc == 0 and out == [f"1 message(s) written to {tmp_path / 'exp'}"]
    stem = tmp_path / "exp" / f"ACC-7_{entry.control_id}"
    text = stem.with_suffix(".hl7").read_bytes().decode()
    assert text == entry.message and str(hl7.parse(text).segment("OBR")[3][0][0]) == "ACC-7"
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(json.loads(stem.with_suffix(".fhir.json").read_text()))

    rc, out, _ = run(capsys, "--outbox", box, "send", "--host", "127.0.0.1", "--port", str(listener.port))
    assert rc == 0 and "1 sent, 0 held (AE), 0 still pending" in out[0]
    rc, out, _ = run(capsys, "--outbox", box, "replay", "ACC-7")  # accepted before: a new message, new id
    (again,) = Outbox(box).entries()
    assert rc == 0 and again.control_id != entry.control_id and again.control_id in out[0]
    assert again.result.to_dict() == entry.result.to_dict()
    rc, out, _ = run(capsys, "--outbox", box, "send", "--host", "127.0.0.1", "--port", str(listener.port))
    assert listener.control_ids() == [entry.control_id, again.control_id]
    assert Outbox(box).counts() == {"pending": 0, "held": 0, "sent": 2}


def test_final_after_review(tmp_path, capsys):
    box = str(tmp_path / "o.sqlite")
    res = results_file(tmp_path / "r.jsonl", {"sample_id": "ACC-8"})
    rc, out, _ = run(capsys, "--outbox", box, "queue", str(res), "--final")
    assert rc == 0 and "(F," in out[0]
    assert str(hl7.parse(Outbox(box).entries()[0].message).segment("OBR")[25]) == "F"


def test_a_missing_outbox_is_not_an_empty_one(tmp_path, capsys):
    for argv in (["status"], ["send", "--host", "127.0.0.1", "--port", "9"], ["replay", "ACC-1"], ["export", "--out", "x"]):
        rc, _, err = run(capsys, "--outbox", str(tmp_path / "typo.sqlite"), *argv)
        assert rc == 2 and len(err) == 1 and "no outbox at" in err[0]
    assert not (tmp_path / "typo.sqlite").exists()


@pytest.mark.parametrize("case", ["no_sample", "bad_table", "unknown_replay", "bad_replay_id", "no_target", "full"])
def test_bad_input_is_one_line_exit_2_and_nothing_is_lost(tmp_path, capsys, case):
    box = str(tmp_path / "o.sqlite")
    keep = results_file(tmp_path / "keep.jsonl", {"sample_id": "ACC-1"})
    assert run(capsys, "--outbox", box, "queue", str(keep))[0] == 0
    before = [e.control_id for e in Outbox(box).entries()]
    if case == "no_sample":
        argv = ["queue", str(results_file(tmp_path / "r.jsonl"))]
        want = "no sample id"
    elif case == "bad_table":
        (tmp_path / "t.json").write_text('{"intervals": {"neutrophil": [80, 40]}}')
        argv = ["queue", str(results_file(tmp_path / "r.jsonl", {"sample_id": "ACC-2"})), "--reference-table",
                str(tmp_path / "t.json")]
        want = "need 0 <= low <= high <= 100"
    elif case == "unknown_replay":
        argv, want = ["replay", "ACC-404"], "never queued"
    elif case == "bad_replay_id":
        argv, want = ["replay", "ACC|1"], "HL7 delimiter"
    elif case == "no_target":
        argv, want = ["send"], "--host and --port"
    else:  # a cap smaller than the outbox already is: the next queue cannot fit
        argv = ["--outbox-max-mb", "0.01", "queue", str(results_file(tmp_path / "r.jsonl", {"sample_id": "ACC-3"}))]
        want = "full"
    if argv[0].startswith("--"):
        argv = [argv[0], argv[1], "--outbox", box] + argv[2:]
    else:
        argv = ["--outbox", box] + argv
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and len(err) == 1 and want in err[0] and err[0].startswith("wbc-lis: "), err
    assert [e.control_id for e in Outbox(box).entries()] == before


def test_real_run_to_the_listener(tmp_path, capsys, listener):
    """wbc-run on the packaged demo bundle and the simulated camera, then queue and send: the listener
    has the sample, the cells counted and the bundle's hash as the run recorded them."""
    import subprocess
    import sys

    from wbc_edge.bundle import sha256_file
    from wbc_edge.cli.run import default_model

    out = tmp_path / "r.jsonl"
    r = subprocess.run([sys.executable, "-m", "wbc_edge.cli.run", "synthetic://?seed=3", "--max-cells", "20", "--quiet",
                        "--threads", "1", "--out", str(out), "--sample-id", "E2E-1", "--device-serial", "SN-E2E"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "sample: E2E-1" in r.stdout, r.stderr
    box = str(tmp_path / "o.sqlite")
    assert run(capsys, "--outbox", box, "queue", str(out))[0] == 0
    assert run(capsys, "--outbox", box, "send", "--host", "127.0.0.1", "--port", str(listener.port))[0] == 0
    (got,) = listener.received
    msg = hl7.parse(got.text)
    assert got.sample_id == "E2E-1" and str(msg.segment("MSH")[3][0][1]) == "SN-E2E"
    obx = {str(s[3][0][0]): str(s[5]) for s in msg.segments("OBX")}
    assert obx["WBCN"] == "20"
    assert sum(float(obx[c]) for c in ("770-8", "736-9", "5905-5", "713-8", "706-2")) == pytest.approx(100, abs=0.3)
    assert str(msg.segments("SFT")[1][4]) == "sha256:" + sha256_file(default_model())
