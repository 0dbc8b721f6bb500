"""The accuracy gate's verdict as the bundle stores it: one schema, written by export, read by the runtime.

`accuracy.json` = {"schema": 1, "n_cells", "class_counts", "max_drop", "min_agreement", "data",
"precisions": {name: {"passed": bool, "weighted_f1", "weighted_f1_drop", "agreement_with_fp32", ...}}}.
Bundles written before the schema field existed have the same layout and read as schema 1.
"""
from __future__ import annotations

import json
from typing import Any

MEMBER = "accuracy.json"
SCHEMA = 1


def encode(report: dict[str, Any]) -> bytes:
    """The report as the bundle member, stamped with the schema it follows."""
    return json.dumps({"schema": SCHEMA, **report}, indent=2).encode()


def verdict(report: Any, precision: str) -> tuple[bool | None, str]:
    """Did the gate accept `precision`? (True/False, or None when the report does not say)."""
    if not isinstance(report, dict) or not isinstance(report.get("precisions"), dict):
        return None, f"{MEMBER} has no 'precisions' table"
    schema = report.get("schema", SCHEMA)
    if schema != SCHEMA:
        return None, f"{MEMBER} is schema {schema}, this version reads {SCHEMA}"
    row = report["precisions"].get(precision)
    if not isinstance(row, dict):
        return None, f"{MEMBER} has no entry for {precision}"
    if not isinstance(row.get("passed"), bool):
        return None, f"{MEMBER} entry for {precision} records no verdict"
    return row["passed"], f"accuracy gate {'accepted' if row['passed'] else 'rejected'} {precision}"


def read_verdict(bundle: Any, precision: str) -> tuple[bool | None, str]:
    if not bundle.has(MEMBER):
        return None, f"bundle has no {MEMBER}"
    try:
        report = bundle.read_json(MEMBER)
    except ValueError:
        return None, f"{MEMBER} is not valid JSON"
    return verdict(report, precision)
