"""ORU^R01: built by hl7apy, re-validated by hl7apy's strict parser, read back field by field by python-hl7."""
from __future__ import annotations

import pytest

hl7 = pytest.importorskip("hl7")
pytest.importorskip("hl7apy")

from hl7apy.consts import VALIDATION_LEVEL  # noqa: E402
from hl7apy.parser import parse_message  # noqa: E402

from wbc_edge.lis.codes import DIFFERENTIAL_LOINC  # noqa: E402
from wbc_edge.lis.hl7v2 import build_oru_r01, control_id_of, new_control_id  # noqa: E402


def obx_by_code(msg) -> dict[str, object]:
    return {str(s[3][0][0]): s for s in msg.segments("OBX")}


def test_message_round_trips_through_hl7apy_and_python_hl7(result_of):
    result = result_of()
    cid = new_control_id()
    text = build_oru_r01(result, cid)
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()  # raises if invalid
    msg = hl7.parse(text)
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(msg.segment("MSH")[12]) == "2.5.1"
    assert str(msg.segment("MSH")[10]) == cid == control_id_of(text)
    assert str(msg.segment("PID")[3][0][0]) == "MRN-1"
    obr = msg.segment("OBR")
    assert str(obr[2]) == "ORD-1" and str(obr[3][0][0]) == "ACC-1" and str(obr[25]) == "P"
    spm = msg.segment("SPM")
    assert str(spm[2][0][1]) == "ACC-1" and str(spm[4][0][0]) == "BLD"
    obx = obx_by_code(msg)
    for share in result.shares:  # one OBX per class: its LOINC, its value, %, range, flag, status
        code = DIFFERENTIAL_LOINC[share.label][0]
        seg = obx[code]
        assert str(seg[2]) == "NM" and str(seg[3][0][2]) == "LN"
        assert float(str(seg[5])) == pytest.approx(share.percent, abs=0.05)
        assert str(seg[6][0][0]) == "%" and str(seg[11]) == "P"
        assert str(seg[7]) == f"{share.reference.low:g}-{share.reference.high:g}"
        assert str(seg[8]) == share.flag
        assert str(seg[17][0][0]) == "IMG4L" and str(seg[18][0][0]) == "SN-1"
    assert float(str(obx["WBCN"][5])) == 200
    assert str(obx["WBCREV"][5]) in ("Y", "N")
    assert len(msg.segments("OBX")) == len(result.shares) + 2
    sft = msg.segments("SFT")
    assert str(sft[0][2]) == "0.1.0" and str(sft[1][4]) == "sha256:" + "ab" * 32


def test_interval_and_count_ride_in_an_nte_after_each_class(result_of):
    with_ci = hl7.parse(build_oru_r01(result_of(), "WE1"))
    notes = [str(s[3]) for s in with_ci.segments("NTE")]
    assert any(n.startswith("95% interval") and "120 of 200 cells" in n for n in notes)
    without_ci = hl7.parse(build_oru_r01(result_of(intervals=False), "WE2"))
    notes = [str(s[3]) for s in without_ci.segments("NTE")]
    assert not any("interval" in n for n in notes) and any(n == "120 of 200 cells" for n in notes)


def test_flags_follow_the_reference_table_by_construction(result_of):
    # 10 % lymphocytes (< 20), 12 % eosinophils (> 6), 70 % neutrophils (inside 40-80)
    result = result_of(shares={"neutrophil": 140, "lymphocyte": 20, "eosinophil": 24, "monocyte": 14, "basophil": 2})
    obx = obx_by_code(hl7.parse(build_oru_r01(result, "WE3")))
    assert str(obx["736-9"][8]) == "L" and str(obx["713-8"][8]) == "H" and str(obx["770-8"][8]) == "N"
    assert str(obx["WBCREV"][5]) == "Y" and result.review


def test_status_is_preliminary_until_reviewed_then_final(result_of):
    final = hl7.parse(build_oru_r01(result_of(reviewed=True), "WE4"))
    assert str(final.segment("OBR")[25]) == "F"
    assert {str(s[11]) for s in final.segments("OBX")} == {"F"}


def test_no_patient_id_means_no_pid_and_still_valid(result_of):
    text = build_oru_r01(result_of(patient_id=None, order_id=None, serial=None), "WE5")
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    msg = hl7.parse(text)
    assert not [s for s in msg if str(s[0]) == "PID"] and str(msg.segment("OBR")[2]) == ""


def test_delimiters_in_free_text_are_escaped_and_come_back(result_of):
    result = result_of()
    nasty = "tech note: A|B ^C~D \\E &F"
    result.review_reasons.append(nasty)
    result.review = True
    text = build_oru_r01(result, "WE6")
    assert nasty not in text and "\\F\\" in text and "\\S\\" in text and "\\R\\" in text and "\\E\\" in text
    msg = hl7.parse(text)
    assert len(msg.segments("NTE")) == len(result.shares) + len(result.review_reasons)  # no segment was split
    assert msg.unescape(str(msg.segments("NTE")[-1][3])) == nasty
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def test_control_ids_are_unique_and_fit_msh10():
    ids = {new_control_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(len(i) <= 20 for i in ids)


def test_the_documented_message_is_valid():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "lis" / "example-oru-r01.hl7").read_bytes().decode()
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    assert str(hl7.parse(text).segment("OBR")[3][0][0]) == "ACC-0001"
