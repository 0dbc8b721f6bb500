"""The gate's verdict is read by the code that writes it, and a schema it does not know is not guessed at."""
import json

from wbc_edge import gate_report


def test_written_report_reads_back_and_other_schemas_are_not_guessed():
    report = {"n_cells": 10, "precisions": {"fp32": {"passed": True}, "int8-cpu": {"passed": False}}}
    stored = json.loads(gate_report.encode(report))
    assert stored["schema"] == gate_report.SCHEMA
    assert gate_report.verdict(stored, "int8-cpu") == (False, "accuracy gate rejected int8-cpu")
    assert gate_report.verdict(report, "fp32")[0] is True  # bundles from before the schema field
    assert gate_report.verdict(stored, "fp16") == (None, "accuracy.json has no entry for fp16")
    future = {**stored, "schema": gate_report.SCHEMA + 1}
    assert gate_report.verdict(future, "fp32")[0] is None and "schema 2" in gate_report.verdict(future, "fp32")[1]
    nested = {"gate": {"precisions": {"fp32": {"ok": True}}}}  # the old reader searched for this; no longer
    assert gate_report.verdict(nested, "fp32")[0] is None
    assert gate_report.verdict({"precisions": {"fp32": {"passed": "yes"}}}, "fp32")[0] is None
