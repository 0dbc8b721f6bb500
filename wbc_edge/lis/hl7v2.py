"""HL7 v2.5.1 ORU^R01 for one sample, built and structure-checked with hl7apy (the `lis` extra).

    MSH  sending device, receiver, time, ORU^R01^ORU_R01, control id, P, 2.5.1
    SFT  wbc-edge software version; SFT  the model bundle (SHA-256 as its binary id)
    PID  patient id (only when one was given)
    OBR  placer = order id, filler = sample (accession) id, panel, time, result status P/F
    OBX  one per class: NM, LOINC, %, reference range, H/L/N, status, method, equipment
    NTE  after a class's OBX: its 95 % interval and raw count
    OBX  cells classified (NM); OBX review flag (ST Y/N) with an NTE per reason
    SPM  the specimen: sample id, whole blood (table 0487 BLD)

Every text value is set as an hl7apy datatype, so hl7apy escapes |, ^, ~, \\ and & in it (\\F\\,
\\S\\, \\R\\, \\E\\, \\T\\); identifiers cannot hold them at all (`identity.check_identifier`).
"""
from __future__ import annotations

import re
import secrets
import time
from typing import Any

from wbc_edge.errors import WbcError
from wbc_edge.lis import codes
from wbc_edge.lis.result import SampleResult

VERSION = "2.5.1"
CONTROL_ID_PREFIX = "WE"  # + 16 hex digits: 18 characters, within MSH-10's 20


class MessageError(WbcError):
    """A result that hl7apy will not build into a valid ORU^R01 (the message names the field)."""


def new_control_id() -> str:
    """A message control id (MSH-10) that no other message from any device will carry (64 random bits)."""
    return CONTROL_ID_PREFIX + secrets.token_hex(8).upper()


def hl7_timestamp(iso: str | None = None) -> str:
    """ISO 8601 UTC ('2026-12-02T05:45:00Z') -> HL7 DTM ('20261202054500+0000'); now when empty."""
    if not iso:
        return time.strftime("%Y%m%d%H%M%S+0000", time.gmtime())
    digits = re.sub(r"[^0-9]", "", iso.split("+")[0].rstrip("Z"))[:14]
    if len(digits) < 8:
        raise MessageError(f"time {iso!r} is not an ISO 8601 date-time")
    return digits + "+0000"


def _number(value: float) -> str:
    return f"{value:.1f}"


def build_oru_r01(result: SampleResult, control_id: str, sending_facility: str = "LAB",
                  receiving_application: str = "LIS", receiving_facility: str = "LAB",
                  message_time: str | None = None) -> str:
    """The ER7 text (segments joined by CR) of one sample's ORU^R01, validated by hl7apy (strict)."""
    try:
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.core import Message
        from hl7apy.exceptions import HL7apyException
        from hl7apy.factories import datatype_factory
    except ImportError:
        raise WbcError("HL7 v2 messages need the lis extra: pip install 'wbc-edge[lis]'") from None
    strict = VALIDATION_LEVEL.STRICT

    def put(element: Any, value: Any) -> None:
        # a datatype object, not a string: hl7apy would parse a string as ER7 (and split it on '|')
        element.value = datatype_factory(element.datatype, str(value), VERSION, strict)

    device = result.instrument or {}
    serial = device.get("device_serial") or "UNKNOWN"
    observed = hl7_timestamp(result.observed_at)
    built = hl7_timestamp(message_time)
    status = result.status
    try:
        m = Message("ORU_R01", version=VERSION, validation_level=strict)
        put(m.msh.msh_3.hd_1, codes.EQUIPMENT_NAMESPACE)
        put(m.msh.msh_3.hd_2, serial)
        put(m.msh.msh_4.hd_1, sending_facility)
        put(m.msh.msh_5.hd_1, receiving_application)
        put(m.msh.msh_6.hd_1, receiving_facility)
        put(m.msh.msh_7.ts_1, built)
        m.msh.msh_9 = "ORU^R01^ORU_R01"
        put(m.msh.msh_10, control_id)
        put(m.msh.msh_11.pt_1, "P")
        put(m.msh.msh_12.vid_1, VERSION)

        sft = m.add_segment("SFT")
        put(sft.sft_1.xon_1, "wbc-edge")
        put(sft.sft_2, device.get("software_version", ""))
        put(sft.sft_3, "wbc-edge")
        put(sft.sft_4, "wbc-edge " + str(device.get("software_version", "")))
        if device.get("model_sha256"):
            sft = m.add_segment("SFT")
            put(sft.sft_1.xon_1, "wbc-edge")
            put(sft.sft_2, device.get("model_bundle", "model bundle"))
            put(sft.sft_3, "wbc-edge model bundle")
            put(sft.sft_4, "sha256:" + device["model_sha256"])

        pr = m.add_group("ORU_R01_PATIENT_RESULT")
        if result.sample.patient_id:
            pid = pr.add_group("ORU_R01_PATIENT").pid
            put(pid.pid_1, "1")
            put(pid.pid_3.cx_1, result.sample.patient_id)
            put(pid.pid_3.cx_5, "MR")
            put(pid.pid_5.xpn_1.fn_1, '""')  # required; the analyzer does not know the name: HL7's explicit null
        oo = pr.add_group("ORU_R01_ORDER_OBSERVATION")
        obr = oo.obr
        put(obr.obr_1, "1")
        if result.sample.order_id:
            put(obr.obr_2.ei_1, result.sample.order_id)
        put(obr.obr_3.ei_1, result.sample.sample_id)
        put(obr.obr_3.ei_2, codes.EQUIPMENT_NAMESPACE)
        put(obr.obr_4.ce_1, codes.PANEL[0])
        put(obr.obr_4.ce_2, codes.PANEL[1])
        put(obr.obr_4.ce_3, codes.LOCAL_SYSTEM_HL7)
        put(obr.obr_7.ts_1, observed)
        put(obr.obr_22.ts_1, built)
        put(obr.obr_24, "HM")
        put(obr.obr_25, status)

        set_id = 0

        def obx(value_type: str, code: tuple[str, str, str], value: str, units: tuple[str, str] | None = None,
                ref_range: str = "", flag: str = "") -> Any:
            nonlocal set_id
            set_id += 1
            group = oo.add_group("ORU_R01_OBSERVATION")
            seg = group.obx
            put(seg.obx_1, str(set_id))
            put(seg.obx_2, value_type)
            put(seg.obx_3.ce_1, code[0])
            put(seg.obx_3.ce_2, code[1])
            put(seg.obx_3.ce_3, code[2])
            seg.obx_5 = value  # numbers and Y/N only: nothing to escape
            if units:
                put(seg.obx_6.ce_1, units[0])
                put(seg.obx_6.ce_2, units[1])
                put(seg.obx_6.ce_3, "UCUM")
            if ref_range:
                put(seg.obx_7, ref_range)
            if flag:
                put(seg.obx_8, flag)
            put(seg.obx_11, status)
            put(seg.obx_14.ts_1, observed)
            put(seg.obx_17.ce_1, codes.METHOD[0])
            put(seg.obx_17.ce_2, codes.METHOD[1])
            put(seg.obx_17.ce_3, codes.LOCAL_SYSTEM_HL7)
            put(seg.obx_18.ei_1, serial)
            put(seg.obx_18.ei_2, codes.EQUIPMENT_NAMESPACE)
            return group

        def note(group: Any, text: str, number: int = 1) -> None:
            nte = group.add_segment("NTE")
            put(nte.nte_1, str(number))
            put(nte.nte_2, "L")  # source: ancillary (filler) department
            put(nte.nte_3, text)

        for share in result.shares:
            ref = share.reference
            group = obx("NM", codes.class_code(share.label), _number(share.percent), ("%", "percent"),
                        f"{ref.low:g}-{ref.high:g}" if ref else "", share.flag)
            text = f"{share.count} of {result.n_cells} cells"
            if share.has_interval:
                text = f"95% interval {share.ci_low:.1f}-{share.ci_high:.1f} %; " + text
            if result.estimate != "count":
                text += f"; share estimated ({result.estimate})"
            note(group, text)
        obx("NM", (*codes.CELLS_COUNTED, codes.LOCAL_SYSTEM_HL7), str(result.n_cells), ("{cells}", "cells"))
        group = obx("ST", (*codes.REVIEW, codes.LOCAL_SYSTEM_HL7), "Y" if result.review else "N")
        for i, reason in enumerate(result.review_reasons, 1):
            note(group, reason, i)
        spm = oo.add_group("ORU_R01_SPECIMEN").spm
        put(spm.spm_1, "1")
        put(spm.spm_2.eip_2.ei_1, result.sample.sample_id)  # filler assigned specimen id
        put(spm.spm_4.cwe_1, "BLD")
        put(spm.spm_4.cwe_2, "Whole blood")
        put(spm.spm_4.cwe_3, "HL70487")
        m.validate()
        return m.to_er7()
    except HL7apyException as e:
        raise MessageError(f"sample {result.sample.sample_id}: ORU^R01 not valid HL7 {VERSION}: {e}") from None


def control_id_of(message: str) -> str:
    """MSH-10 of an ER7 message (the id its ACK must echo in MSA-2)."""
    msh = message.split("\r", 1)[0]
    if not msh.startswith("MSH") or len(msh) < 8:
        raise MessageError("not an HL7 v2 message (no MSH segment first)")
    fields = msh.split(msh[3])
    return fields[9] if len(fields) > 9 else ""
