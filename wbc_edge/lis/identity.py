"""Who a run's count belongs to (the sample) and what produced it (the device).

Standard library only: the runtime records both in the results file's header line, and a build
without the `lis` extra still runs, counts and writes them. Identifiers are checked once, here, so
no HL7 delimiter or control character can reach a message: a sample id such as `S1|PID` would
otherwise split a field and file the result under another sample.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from wbc_edge.errors import WbcError

MAX_ID_LEN = 64
HL7_DELIMITERS = "|^~\\&"  # field, component, repetition, escape, subcomponent (MSH-1, MSH-2)


class IdentityError(WbcError):
    """A sample, patient, order or device identifier that cannot be sent to a laboratory system."""


def check_identifier(value: Any, what: str) -> str:
    """`value` as a sendable identifier, or IdentityError naming `what` and the offending character.

    Printable ASCII only (barcode accession numbers), no HL7 delimiters, no leading/trailing space,
    at most MAX_ID_LEN characters.
    """
    text = "" if value is None else str(value)
    if not text:
        raise IdentityError(f"{what}: empty identifier")
    if len(text) > MAX_ID_LEN:
        raise IdentityError(f"{what} '{text[:20]}...': {len(text)} characters, at most {MAX_ID_LEN}")
    for i, ch in enumerate(text):
        if ch in HL7_DELIMITERS:
            raise IdentityError(f"{what} {text!r}: character {i + 1} '{ch}' is an HL7 delimiter ({HL7_DELIMITERS})")
        if not (" " <= ch <= "~"):
            raise IdentityError(f"{what} {text!r}: character {i + 1} ({ch!r}) is not printable ASCII")
    if text != text.strip():
        raise IdentityError(f"{what} {text!r}: leading or trailing space")
    return text


@dataclass(frozen=True)
class SampleIdentity:
    """The sample (accession) a run counted, and optionally its patient and order (placer) ids."""

    sample_id: str
    patient_id: str | None = None
    order_id: str | None = None

    def __post_init__(self) -> None:
        check_identifier(self.sample_id, "sample id")
        if self.patient_id is not None:
            check_identifier(self.patient_id, "patient id")
        if self.order_id is not None:
            check_identifier(self.order_id, "order id")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SampleIdentity | None":
        """The identity a results header recorded; None for a run without a sample id."""
        if not d or not d.get("sample_id"):
            return None
        return cls(sample_id=d["sample_id"], patient_id=d.get("patient_id"), order_id=d.get("order_id"))


def sample_identity(sample_id: str | None, patient_id: str | None = None, order_id: str | None = None) -> SampleIdentity | None:
    """A SampleIdentity from command-line style options; None when no sample id is given."""
    if sample_id is None:
        if patient_id is not None or order_id is not None:
            raise IdentityError("a patient or order id was given without a sample id (--sample-id)")
        return None
    return SampleIdentity(sample_id, patient_id, order_id)


def profile_serial(profile: Any) -> str | None:
    """The device serial a device profile records (a mapping or a JSON file path), if any."""
    if profile is None:
        return None
    if isinstance(profile, (str, os.PathLike)):
        try:
            profile = json.loads(Path(profile).read_text())
        except (OSError, ValueError):
            return None  # the profile's own loader reports an unreadable profile
    if isinstance(profile, Mapping):
        serial = profile.get("device_serial") or profile.get("serial")
    else:
        serial = getattr(profile, "device_serial", None) or getattr(profile, "serial", None)
    return None if serial is None else check_identifier(serial, "device serial (profile)")


def device_identity(bundle: Any = None, serial: str | None = None) -> dict[str, Any]:
    """What produced a count: software version, model bundle (name, SHA-256 of the file), device serial."""
    from wbc_edge import __version__

    out: dict[str, Any] = {"software_version": __version__}
    path = getattr(bundle, "path", None)
    if path is not None:
        from wbc_edge.bundle import sha256_file

        out["model_bundle"] = Path(path).name
        try:
            out["model_sha256"] = sha256_file(path)
        except OSError:
            out["model_sha256"] = ""
    if serial is not None:
        out["device_serial"] = check_identifier(serial, "device serial")
    return out
