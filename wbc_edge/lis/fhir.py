"""The same result as FHIR R4: a DiagnosticReport and one Observation per class, in a transaction Bundle.

Resources are plain JSON dicts, checked with fhir.resources (the `lis` extra; its R4B models, whose
DiagnosticReport and Observation are R4's). Ids are derived from the message control id, and each
entry is a conditional create on its identifier, so a POST repeated after a lost response creates
nothing twice. `post_bundle` talks to a FHIR server's base URL with urllib (standard library).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from wbc_edge.bundle import atomic_write_text
from wbc_edge.errors import WbcError
from wbc_edge.lis import codes
from wbc_edge.lis.mllp import Ack, TransportError
from wbc_edge.lis.result import SampleResult

ID_SYSTEM_MESSAGE = "urn:wbc-edge:message"  # identifier system: control id (+ class) of the result
ID_SYSTEM_ACCESSION = "urn:wbc-edge:accession"
ID_SYSTEM_DEVICE = "urn:wbc-edge:device"
ID_SYSTEM_ORDER = "urn:wbc-edge:order"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
INTERPRETATION_TEXT = {"H": "High", "L": "Low", "N": "Normal"}
_NAMESPACE = uuid.UUID("5b0f3c1e-6f1c-4d0e-9a5e-77c0e1a1d2b3")


class FhirError(WbcError):
    """A result that fhir.resources rejects, or a FHIR server that refuses it."""


def _urn(*parts: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _pct(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 1), "unit": "%", "system": codes.UCUM_SYSTEM_FHIR, "code": "%"}


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def build_bundle(result: SampleResult, control_id: str, issued: str | None = None) -> dict[str, Any]:
    """A transaction Bundle: one Observation per class, cells counted, review flag, the DiagnosticReport."""
    status = "final" if result.reviewed else "preliminary"
    s = result.sample
    subject = {"identifier": {"type": _coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number"),
                              "value": s.patient_id}} if s.patient_id else None
    specimen = {"identifier": {"system": ID_SYSTEM_ACCESSION, "value": s.sample_id}, "display": f"sample {s.sample_id}"}
    serial = (result.instrument or {}).get("device_serial")
    device = {"identifier": {"system": ID_SYSTEM_DEVICE, "value": serial}, "display": f"wbc-edge {serial}"} if serial \
        else {"display": "wbc-edge " + str((result.instrument or {}).get("software_version", ""))}
    common: dict[str, Any] = {
        "status": status,
        "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")],
        "effectiveDateTime": result.observed_at,
        "method": _coding(codes.LOCAL_SYSTEM_FHIR, codes.METHOD[0], codes.METHOD[1]),
        "device": device,
        "specimen": specimen,
    }
    if subject:
        common["subject"] = subject

    observations: list[tuple[str, dict[str, Any]]] = []
    for share in result.shares:
        code, name, system = codes.class_code(share.label)
        obs = {"resourceType": "Observation", "identifier": [{"system": ID_SYSTEM_MESSAGE, "value": f"{control_id}-{share.label}"}],
               **common, "code": _coding(codes.LOINC_SYSTEM_FHIR if system == codes.LOINC_SYSTEM_HL7 else codes.LOCAL_SYSTEM_FHIR, code, name),
               "valueQuantity": _pct(share.percent)}
        if share.reference:
            obs["referenceRange"] = [{"low": _pct(share.reference.low), "high": _pct(share.reference.high),
                                      "text": result.reference_source[:200] or None}]
            obs["referenceRange"][0] = {k: v for k, v in obs["referenceRange"][0].items() if v is not None}
        if share.flag:
            obs["interpretation"] = [_coding(INTERPRETATION, share.flag, INTERPRETATION_TEXT[share.flag])]
        note = f"{share.count} of {result.n_cells} cells"
        if share.has_interval:
            note = f"95% interval {share.ci_low:.1f}-{share.ci_high:.1f} %; " + note
        obs["note"] = [{"text": note}]
        observations.append((_urn(control_id, share.label), obs))
    observations.append((_urn(control_id, "cells"), {
        "resourceType": "Observation", "identifier": [{"system": ID_SYSTEM_MESSAGE, "value": f"{control_id}-cells"}], **common,
        "code": _coding(codes.LOCAL_SYSTEM_FHIR, *codes.CELLS_COUNTED),
        "valueQuantity": {"value": int(result.n_cells), "unit": "cells", "system": codes.UCUM_SYSTEM_FHIR, "code": "{cells}"}}))
    review = {"resourceType": "Observation", "identifier": [{"system": ID_SYSTEM_MESSAGE, "value": f"{control_id}-review"}], **common,
              "code": _coding(codes.LOCAL_SYSTEM_FHIR, *codes.REVIEW), "valueBoolean": bool(result.review)}
    if result.review_reasons:
        review["note"] = [{"text": r} for r in result.review_reasons]
    observations.append((_urn(control_id, "review"), review))

    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": ID_SYSTEM_MESSAGE, "value": control_id}],
        "status": status,
        "category": [_coding("http://terminology.hl7.org/CodeSystem/v2-0074", "HM", "Hematology")],
        "code": _coding(codes.LOCAL_SYSTEM_FHIR, *codes.PANEL),
        "effectiveDateTime": result.observed_at,
        "issued": issued or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "specimen": [specimen],
        "result": [{"reference": url} for url, _ in observations],
    }
    if subject:
        report["subject"] = subject
    if s.order_id:
        report["basedOn"] = [{"identifier": {"system": ID_SYSTEM_ORDER, "value": s.order_id}, "type": "ServiceRequest"}]
    if result.review_reasons:
        report["conclusion"] = "Needs review: " + "; ".join(result.review_reasons)

    entries = [(url, obs) for url, obs in observations] + [(_urn(control_id, "report"), report)]
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "identifier": {"system": ID_SYSTEM_MESSAGE, "value": control_id},
        "entry": [{"fullUrl": url, "resource": res,
                   "request": {"method": "POST", "url": res["resourceType"],
                               "ifNoneExist": f"identifier={ID_SYSTEM_MESSAGE}|{res['identifier'][0]['value']}"}}
                  for url, res in entries],
    }
    validate(bundle)
    return bundle


def validate(bundle: dict[str, Any]) -> None:
    """fhir.resources' check of the Bundle and of every resource in it, by its own model."""
    try:
        from fhir.resources.R4B import get_fhir_model_class
        from pydantic import ValidationError
    except ImportError:
        raise WbcError("FHIR output needs the lis extra: pip install 'wbc-edge[lis]'") from None
    try:
        get_fhir_model_class("Bundle").model_validate(bundle)
        for entry in bundle.get("entry", []):
            res = entry["resource"]
            get_fhir_model_class(res["resourceType"]).model_validate(res)
    except (ValidationError, KeyError, ValueError) as e:
        first = str(e).splitlines()
        raise FhirError(f"FHIR bundle {bundle.get('identifier', {}).get('value', '?')}: not valid R4 "
                        f"({' '.join(first[:3])})") from None


def write_bundle_json(path: str | Path, bundle: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(bundle, indent=2) + "\n")
    return Path(path)


def post_bundle(base_url: str, bundle: dict[str, Any], timeout: float = 10.0) -> Ack:
    """POST the transaction to a FHIR server's base URL. 2xx -> AA; 4xx -> AE (the server refuses this
    content: held); 5xx, timeout or no connection -> TransportError (retried)."""
    data = json.dumps(bundle).encode("utf-8")
    control_id = str(bundle.get("identifier", {}).get("value", ""))
    req = urllib.request.Request(base_url.rstrip("/") or base_url, data=data, method="POST",
                                 headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(1 << 20)
            return Ack("AA", control_id, f"HTTP {resp.status}")
    except urllib.error.HTTPError as e:
        if 400 <= e.code < 500:
            return Ack("AE", control_id, f"HTTP {e.code} {e.reason}")
        raise TransportError(f"FHIR server {base_url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise TransportError(f"FHIR server {base_url}: {reason}") from None
