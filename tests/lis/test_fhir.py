"""FHIR R4 DiagnosticReport + Observations: validated by fhir.resources, POSTed to a local http.server."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("fhir.resources")
pytest.importorskip("hl7apy")

from fhir.resources.R4B.bundle import Bundle  # noqa: E402
from fhir.resources.R4B.diagnosticreport import DiagnosticReport  # noqa: E402
from fhir.resources.R4B.observation import Observation  # noqa: E402

from wbc_edge.lis import Outbox, SendPolicy, drain, fhir_transport, queue_result  # noqa: E402
from wbc_edge.lis.codes import DIFFERENTIAL_LOINC  # noqa: E402
from wbc_edge.lis.fhir import FhirError, build_bundle, validate  # noqa: E402


def resources(bundle, kind):
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_bundle_is_valid_and_carries_each_class(result_of):
    result = result_of(shares={"neutrophil": 140, "lymphocyte": 20, "eosinophil": 24, "monocyte": 14, "basophil": 2})
    bundle = build_bundle(result, "WE1")
    Bundle.model_validate(bundle)
    (report,) = resources(bundle, "DiagnosticReport")
    DiagnosticReport.model_validate(report)
    assert report["status"] == "preliminary" and report["specimen"][0]["identifier"]["value"] == "ACC-1"
    assert report["subject"]["identifier"]["value"] == "MRN-1"
    assert report["basedOn"][0]["identifier"]["value"] == "ORD-1"
    obs = {o["code"]["coding"][0]["code"]: o for o in resources(bundle, "Observation")}
    fulls = {e["fullUrl"] for e in bundle["entry"]}
    assert {r["reference"] for r in report["result"]} <= fulls and len(report["result"]) == len(obs) == 7
    for share in result.shares:
        o = obs[DIFFERENTIAL_LOINC[share.label][0]]
        Observation.model_validate(o)
        assert o["code"]["coding"][0]["system"] == "http://loinc.org"
        assert o["valueQuantity"] == {"value": round(share.percent, 1), "unit": "%",
                                      "system": "http://unitsofmeasure.org", "code": "%"}
        assert o["referenceRange"][0]["low"]["value"] == share.reference.low
        assert o["interpretation"][0]["coding"][0]["code"] == share.flag
    assert obs["736-9"]["interpretation"][0]["coding"][0]["code"] == "L"  # 10 % < 20 %
    assert obs["713-8"]["interpretation"][0]["coding"][0]["code"] == "H"  # 12 % > 6 %
    assert obs["WBCN"]["valueQuantity"]["value"] == 200 and obs["WBCREV"]["valueBoolean"] is True
    assert all(e["request"]["ifNoneExist"].startswith("identifier=urn:wbc-edge:message|WE1") for e in bundle["entry"])
    assert build_bundle(result_of(reviewed=True), "WE2")["entry"][-1]["resource"]["status"] == "final"


@pytest.mark.parametrize("spoil", [lambda o: o.pop("status"),  # required (1..1)
                                   lambda o: o["valueQuantity"].update(value="lots"),  # decimal
                                   lambda o: o.update(issuedAt="yesterday")])  # no such element
def test_an_invalid_resource_is_refused_in_one_line(result_of, spoil):
    bundle = build_bundle(result_of(), "WE3")
    spoil(bundle["entry"][0]["resource"])
    with pytest.raises(FhirError) as e:
        validate(bundle)
    assert "\n" not in str(e.value) and "WE3" in str(e.value)


class _Fhir(BaseHTTPRequestHandler):
    statuses: list[int] = []
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        code = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(code)
        self.send_header("Content-Type", "application/fhir+json")
        self.end_headers()
        self.wfile.write(json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fhir_server():
    handler = type("Handler", (_Fhir,), {"statuses": [], "bodies": []})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield handler, f"http://127.0.0.1:{srv.server_address[1]}/fhir"
    srv.shutdown()
    srv.server_close()


def test_post_to_a_fhir_base_url_drains_the_outbox(tmp_path, result_of, fhir_server):
    handler, url = fhir_server
    box = Outbox(tmp_path / "o.sqlite")
    ok = queue_result(box, result_of(sample_id="ACC-1"))
    refused = queue_result(box, result_of(sample_id="ACC-2"))
    handler.statuses = [503, 200, 422]  # busy, then accepted; the second is refused for its content
    report = drain(box, fhir_transport(url, timeout=5), SendPolicy(attempts=3, backoff_s=0.01))
    assert report.sent == [ok] and report.held == [refused]
    assert [b["identifier"]["value"] for b in handler.bodies] == [ok, ok, refused]  # same id on the retry
    Bundle.model_validate(handler.bodies[0])
    assert box.entries("held")[0].last_error.startswith("AE: HTTP 422")


def test_the_documented_bundle_is_valid():
    from pathlib import Path

    bundle = json.loads((Path(__file__).parents[2] / "docs" / "lis" / "example-bundle.fhir.json").read_text())
    validate(bundle)
    assert resources(bundle, "DiagnosticReport")[0]["specimen"][0]["identifier"]["value"] == "ACC-0001"
