"""A real MLLP listener on 127.0.0.1 (asyncio, in a thread) whose ACKs python-hl7 builds, and result fixtures.

The listener follows a script, one behaviour per message it is sent (then `default`):
    "AA" / "AE" / "AR"  reply with that ACK (python-hl7's create_ack echoes MSH-10 in MSA-2)
    "silent"            read the message, record it, never reply (the sender times out)
    "drop"              read the first bytes, then close the connection mid-message
Every complete message received is recorded with its control id and sample (OBR-3), parsed by
python-hl7, so tests check what arrived on the far side, not what the sender thinks it sent.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest

VT, FS_CR = b"\x0b", b"\x1c\x0d"


@dataclass
class Received:
    control_id: str
    sample_id: str
    text: str
    answered: str


@dataclass
class MllpListener:
    script: list[str] = field(default_factory=list)
    default: str = "AA"
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="mllp-listener")
        self._server = None
        self._lock = threading.Lock()

    # -- control from the test thread --------------------------------------------------------
    def start(self, port: int = 0) -> "MllpListener":
        if not self._thread.is_alive():
            self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", port), self._loop)
        self._server = fut.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop_listening(self) -> None:
        if self._server is not None:
            async def close(server):
                server.close()
                await server.wait_closed()
            asyncio.run_coroutine_threadsafe(close(self._server), self._loop).result(timeout=10)
            self._server = None

    def close(self) -> None:
        self.stop_listening()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def wait_for(self, n: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= n:
                return True
            time.sleep(0.02)
        return False

    def control_ids(self) -> list[str]:
        return [r.control_id for r in self.received]

    # -- the server ------------------------------------------------------------------------
    def _next(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import hl7

        self.connections += 1
        try:
            behaviour = self._next()
            if behaviour == "drop":
                await reader.read(16)  # part of the start of the message, then gone
                return
            data = await asyncio.wait_for(reader.readuntil(FS_CR), timeout=30)
            text = data[data.index(VT) + 1 : -2].decode("utf-8")
            msg = hl7.parse(text)
            sample = str(msg.segment("OBR")[3][0][0]) if any(s[0][0] == "OBR" for s in msg) else ""
            self.received.append(Received(str(msg.segment("MSH")[10]), sample, text, behaviour))
            if behaviour == "silent":
                await reader.read()  # until the sender gives up and closes
                return
            ack = msg.create_ack(ack_code=behaviour)
            writer.write(VT + str(ack).encode("utf-8") + FS_CR)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


@pytest.fixture
def listener():
    pytest.importorskip("hl7")
    lst = MllpListener().start()
    yield lst
    lst.close()


@pytest.fixture
def make_listener():
    """Start listeners on chosen ports (a port that was down a moment ago); all closed at the end."""
    pytest.importorskip("hl7")
    started: list[MllpListener] = []

    def start(port: int = 0, **kw) -> MllpListener:
        lst = MllpListener(**kw).start(port)
        started.append(lst)
        return lst

    yield start
    for lst in started:
        lst.close()


def make_result(sample_id: str = "ACC-1", shares=None, patient_id: str | None = "MRN-1",
                order_id: str | None = "ORD-1", intervals: bool = True, reviewed: bool = False, flag_counts=None,
                serial: str | None = "SN-1"):
    """A SampleResult through the same mapping a run uses (`from_summary`), from counts chosen by hand."""
    from wbc_edge.lis.result import from_summary
    from wbc_edge.runtime.results import Differential, RunSummary

    counts = shares or {"neutrophil": 120, "lymphocyte": 60, "eosinophil": 8, "monocyte": 10, "basophil": 2}
    diff = Differential(list(counts))
    for label, k in counts.items():
        for _ in range(k):
            diff.add(label)
    summary = RunSummary.from_differential(diff, flag_counts=flag_counts or {})
    if not intervals:
        for r in summary.rows:
            r.ci_low = r.ci_high = None
    summary.sample = {"sample_id": sample_id, **({"patient_id": patient_id} if patient_id else {}),
                      **({"order_id": order_id} if order_id else {})}
    summary.instrument = {"software_version": "0.1.0", "model_bundle": "demo.wbc", "model_sha256": "ab" * 32,
                          **({"device_serial": serial} if serial else {})}
    return from_summary(summary, {"started": "2026-12-02T05:45:00Z"}, reviewed=reviewed)


@pytest.fixture
def result_of():
    """make_result as a fixture (tests import no conftest under --import-mode=importlib)."""
    return make_result
