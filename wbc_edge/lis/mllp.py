"""MLLP (HL7's minimal lower layer protocol) over TCP, standard library only.

A message travels as <VT> message <FS><CR> (0x0B ... 0x1C 0x0D); the receiver answers with an ACK
in the same framing whose MSA-1 is AA (accepted), AE (error) or AR (rejected) and whose MSA-2
echoes the message's control id (MSH-10). One `send` opens a connection, writes one framed message,
waits for its ACK with a deadline and closes: nothing is kept open across a power cut.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from wbc_edge.errors import WbcError

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 1 << 20


class TransportError(WbcError):
    """No usable ACK: host unreachable, connection refused or dropped, timeout, a garbled reply."""


@dataclass(frozen=True)
class Ack:
    code: str  # AA, AE, AR (or CA/CE/CR in enhanced mode)
    control_id: str  # MSA-2: the control id of the message acknowledged
    text: str = ""  # MSA-3 / ERR text, for the log

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    data = message.encode(encoding) if isinstance(message, str) else message
    if START_BLOCK in data or b"\x1c" in data:
        raise TransportError("message contains an MLLP framing byte (0x0B or 0x1C)")
    return START_BLOCK + data + END_BLOCK


def parse_ack(data: bytes, encoding: str = "utf-8") -> Ack:
    """The MSA of an ACK message (ER7 text, framing removed)."""
    text = data.decode(encoding, errors="replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise TransportError(f"reply is not an HL7 message: {text[:40]!r}")
    sep = segments[0][3]
    for seg in segments:
        fields = seg.split(sep)
        if fields[0] == "MSA":
            code = fields[1] if len(fields) > 1 else ""
            if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
                raise TransportError(f"ACK has MSA-1 {code!r}, not AA/AE/AR")
            err = next((s.split(sep) for s in segments if s.startswith("ERR")), None)
            detail = fields[3] if len(fields) > 3 and fields[3] else ""
            if not detail and err:
                detail = " ".join(f for f in err[1:] if f)
            return Ack(code=code, control_id=fields[2] if len(fields) > 2 else "", text=detail)
    raise TransportError("reply has no MSA segment (not an ACK)")


def send_message(host: str, port: int, message: str | bytes, timeout: float = 10.0,
                 connect_timeout: float = 5.0) -> Ack:
    """Send one message and return its ACK; TransportError if none came within `timeout` seconds."""
    where = f"LIS {host}:{port}"
    payload = frame(message)
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as e:
        raise TransportError(f"{where}: cannot connect ({e.strerror or e})") from None
    deadline = time.monotonic() + timeout
    buf = bytearray()
    try:
        sock.settimeout(timeout)
        sock.sendall(payload)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"{where}: no ACK within {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise TransportError(f"{where}: no ACK within {timeout:g} s") from None
            if not chunk:
                raise TransportError(f"{where}: connection closed before the ACK"
                                     + (f" ({len(buf)} bytes of it)" if buf else ""))
            buf += chunk
            start = buf.find(START_BLOCK)
            end = buf.find(END_BLOCK, start + 1) if start >= 0 else -1
            if end >= 0:
                return parse_ack(bytes(buf[start + 1 : end]))
            if len(buf) > MAX_ACK_BYTES:
                raise TransportError(f"{where}: reply over {MAX_ACK_BYTES} bytes without an MLLP end block")
    except OSError as e:
        raise TransportError(f"{where}: {e.strerror or e}") from None
    finally:
        sock.close()
