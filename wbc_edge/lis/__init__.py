"""Results to the laboratory information system: HL7 v2.5.1 ORU^R01 over MLLP, FHIR R4, a durable outbox.

Torch-free. `identity`, `result`, `mllp` and `outbox` need only the standard library (the runtime
records sample identity without the extra); building messages needs the `lis` extra (hl7apy for
HL7 v2, fhir.resources for FHIR): `pip install 'wbc-edge[lis]'`.

Library use (what `wbc-lis queue` and `wbc-lis send` do):

    from wbc_edge.lis import Outbox, queue_summary, mllp_transport, drain
    box = Outbox("lis-outbox.sqlite")
    queue_summary(box, analyzer.analyze(source, sink="r.jsonl", sample=SampleIdentity("S1")))
    print(drain(box, mllp_transport("lis.example", 2575)).line())
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from wbc_edge.lis.identity import IdentityError, SampleIdentity, check_identifier, device_identity, sample_identity
from wbc_edge.lis.mllp import Ack, TransportError, send_message
from wbc_edge.lis.outbox import DrainReport, Entry, Outbox, OutboxError, SendPolicy, Transport, drain
from wbc_edge.lis.result import ClassShare, ResultError, SampleResult, from_summary, load_reference_table

__all__ = ["Ack", "ClassShare", "DrainReport", "Entry", "IdentityError", "Outbox", "OutboxError", "ResultError",
           "SampleIdentity", "SampleResult", "SendPolicy", "Transport", "TransportError", "check_identifier",
           "device_identity", "drain", "fhir_transport", "from_summary", "load_reference_table", "mllp_transport",
           "queue_result", "queue_results_file", "queue_summary", "sample_identity", "send_message"]


def queue_result(outbox: Outbox, result: SampleResult) -> str:
    """Commit one sample's ORU^R01 to the outbox under a fresh control id (returned)."""
    from wbc_edge.lis.hl7v2 import build_oru_r01, new_control_id

    return outbox.enqueue(result, build_oru_r01, new_control_id)


def queue_summary(outbox: Outbox, summary: Any, header: Mapping[str, Any] | None = None, reviewed: bool = False,
                  reference_table: str | Path | None = None) -> str:
    """Queue a run's summary (ResultError if the run has no sample id: counted, never sent)."""
    return queue_result(outbox, from_summary(summary, header, reviewed=reviewed, reference_table=reference_table))


def queue_results_file(outbox: Outbox, results_jsonl: str | Path, reviewed: bool = False,
                       reference_table: str | Path | None = None) -> str:
    """Queue the last run of a wbc-run results file, rebuilt from the file (the source of truth)."""
    from wbc_edge.runtime.results import read_results, summarize

    header, _cells, _bad = read_results(results_jsonl)
    return queue_summary(outbox, summarize(results_jsonl), header, reviewed=reviewed, reference_table=reference_table)


def mllp_transport(host: str, port: int, timeout: float = 10.0, connect_timeout: float = 5.0) -> Transport:
    """Send an outbox entry's stored ORU^R01, byte for byte, over MLLP."""
    def send(entry: Entry) -> Ack:
        return send_message(host, port, entry.message, timeout=timeout, connect_timeout=connect_timeout)
    return send


def fhir_transport(base_url: str, timeout: float = 10.0) -> Transport:
    """POST an outbox entry as a FHIR transaction Bundle (same control id, conditional creates)."""
    from wbc_edge.lis.fhir import build_bundle, post_bundle

    def send(entry: Entry) -> Ack:
        return post_bundle(base_url, build_bundle(entry.result, entry.control_id, issued=entry.created_at), timeout=timeout)
    return send
