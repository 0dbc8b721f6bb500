"""A run carries its sample and the device's identity: results header, live summary, rebuilt summary."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wbc_edge.bundle import sha256_file
from wbc_edge.lis.identity import IdentityError, SampleIdentity, check_identifier, profile_serial, sample_identity
from wbc_edge.runtime.pipeline import Analyzer
from wbc_edge.runtime.results import summarize


def test_run_records_sample_and_instrument(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    out = tmp_path / "r.jsonl"
    bundle, _ = rt_bundle
    with Analyzer(bundle, precision="fp32", **rt_analyzer_kw) as an:
        an.device_serial = "SN-77"
        summary = an.analyze(rt_fakes.Source(rt_fakes.make_fields(3, rt_spec)), sink=out,
                             sample=SampleIdentity("ACC-1", patient_id="MRN-9", order_id="ORD-3"))
    header = json.loads(out.read_text().splitlines()[0])
    assert header["sample"] == {"sample_id": "ACC-1", "patient_id": "MRN-9", "order_id": "ORD-3"}
    assert header["instrument"]["model_sha256"] == sha256_file(bundle)
    assert header["instrument"]["device_serial"] == "SN-77"
    assert header["instrument"]["software_version"] == __import__("wbc_edge").__version__
    rebuilt = summarize(out)
    assert summary.sample == rebuilt.sample == header["sample"]
    assert summary.instrument == rebuilt.instrument == header["instrument"]
    assert summary.total_cells == rebuilt.total_cells > 0


def test_a_bare_sample_id_string_is_checked_too(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    with Analyzer(rt_bundle[0], precision="fp32", **rt_analyzer_kw) as an:
        summary = an.analyze(rt_fakes.Source(rt_fakes.make_fields(1, rt_spec)), sample="ACC-9")
        assert summary.sample == {"sample_id": "ACC-9"}
        with pytest.raises(IdentityError, match="HL7 delimiter"):
            an.analyze(rt_fakes.Source(rt_fakes.make_fields(1, rt_spec)), sink=tmp_path / "r.jsonl", sample="ACC|9")
    assert not (tmp_path / "r.jsonl").exists()  # refused before anything was written


def test_run_without_sample_is_counted_but_has_no_identity(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    from wbc_edge.lis.result import ResultError, from_summary

    out = tmp_path / "r.jsonl"
    with Analyzer(rt_bundle[0], precision="fp32", **rt_analyzer_kw) as an:
        summary = an.analyze(rt_fakes.Source(rt_fakes.make_fields(2, rt_spec)), sink=out)
    assert summary.total_cells > 0 and summary.sample is None and summarize(out).sample is None
    with pytest.raises(ResultError, match="no sample id"):
        from_summary(summarize(out))


@pytest.mark.parametrize("bad, why", [("S1|PID", "'|' is an HL7 delimiter"), ("A^B", "'^' is an HL7"),
                                      ("A~B", "'~' is an HL7"), ("A\\B", "'\\' is an HL7"), ("A&B", "'&' is an HL7"),
                                      ("A\rB", "not printable"), ("\u00c41", "not printable"),
                                      (" A", "leading or trailing"), ("", "empty"), ("X" * 65, "at most 64")])
def test_bad_identifiers_are_refused(bad, why):
    with pytest.raises(IdentityError) as e:
        check_identifier(bad, "sample id")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("sample id") and why in msg, msg


def test_identity_options():
    assert sample_identity(None) is None
    with pytest.raises(IdentityError, match="without a sample id"):
        sample_identity(None, patient_id="P1")
    assert SampleIdentity.from_dict(SampleIdentity("S-1", order_id="O").to_dict()) == SampleIdentity("S-1", order_id="O")
    assert profile_serial({"device_serial": "SN-1"}) == "SN-1" and profile_serial({"um_per_px": 0.2}) is None
    with pytest.raises(IdentityError):
        profile_serial({"serial": "SN|1"})


def test_wbc_run_bad_sample_id_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "wbc_edge.cli.run", "--sample-id", "S1|PID^X", "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "sample id" in lines[0] and "HL7 delimiter" in lines[0], r.stderr
