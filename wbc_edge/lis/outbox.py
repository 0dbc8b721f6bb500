"""The durable outbox: every result is committed to SQLite before its first send, and leaves only on AA.

Each message is built once, with its control id (MSH-10) inside, and stored as the exact text that
goes on the wire; a resend after a lost ACK, a kill or a power cut sends the same bytes under the
same control id, so the LIS can recognise it. After an AA the row moves to `sent` (the history that
`replay` reads) in the same transaction that removes it from `outbox`. An AE holds the message for
the service engineer (a resend of the same content fails the same way); an AR, a timeout or a
dropped connection is retried with exponential backoff. Standard library only (sqlite3).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process drain lock
    fcntl = None  # type: ignore[assignment]

from wbc_edge.errors import WbcError
from wbc_edge.lis.mllp import Ack, TransportError
from wbc_edge.lis.result import SampleResult

log = logging.getLogger(__name__)

PENDING, HELD = "pending", "held"
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    control_id TEXT PRIMARY KEY,
    sample_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    message TEXT NOT NULL,
    result_json TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    control_id TEXT PRIMARY KEY,
    sample_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    acked_at TEXT NOT NULL,
    message TEXT NOT NULL,
    result_json TEXT NOT NULL,
    attempts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_sample ON outbox(sample_id);
CREATE INDEX IF NOT EXISTS sent_sample ON sent(sample_id);
"""


class OutboxError(WbcError):
    """The outbox file cannot be opened or written (disk full, read-only, not an outbox)."""


@dataclass
class Entry:
    control_id: str
    sample_id: str
    created_at: str
    message: str
    result: SampleResult
    state: str = PENDING
    attempts: int = 0
    last_error: str = ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Outbox:
    """An SQLite outbox file. max_bytes caps the file (a small flash partition): past it an enqueue
    fails with OutboxError instead of filling the device's disk."""

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        self.path = Path(path)
        self.max_bytes = max_bytes
        with self._connect() as db:
            try:
                db.executescript(SCHEMA)
            except sqlite3.Error as e:
                raise self._fail(e, "create its tables") from None

    # ---- plumbing -------------------------------------------------------------------------
    def _fail(self, e: BaseException, doing: str) -> OutboxError:
        text = str(e)
        if "full" in text:
            text += "; nothing was queued, the run's results file still holds the result"
        return OutboxError(f"outbox {self.path}: cannot {doing} ({text})")

    def _connect(self) -> sqlite3.Connection:
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before send() is called
            if self.max_bytes:
                page = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={max(1, int(self.max_bytes) // int(page))}")
        except (sqlite3.Error, OSError) as e:
            raise self._fail(e, "open") from None
        return _Closing(db)

    def _run(self, doing: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._connect() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                out = fn(db)
                db.execute("COMMIT")
                return out
            except sqlite3.Error as e:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise self._fail(e, doing) from None

    @contextmanager
    def draining(self) -> Iterator[None]:
        """One sender at a time (a second `wbc-lis send` would send the same messages in parallel); the
        kernel drops the lock of a killed sender."""
        if fcntl is None:
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            f = open(lock_path, "a+")
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot open its lock {lock_path} ({e.strerror or e})") from None
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutboxError(f"outbox {self.path}: another sender is draining it") from None
            yield
        finally:
            f.close()  # closing releases the lock

    # ---- queueing -------------------------------------------------------------------------
    def enqueue(self, result: SampleResult, build: Callable[[SampleResult, str], str],
                new_id: Callable[[], str], again: bool = False) -> str:
        """Build the message under a fresh control id and commit it; returns the control id.

        Queueing the same result of the same sample twice (a retried script, a second `wbc-lis queue`
        of one results file) returns the control id it already has instead of a second message under
        a new id; `again=True` (replay) queues it anew."""
        control_id = new_id()
        message = build(result, control_id)
        payload = json.dumps(result.to_dict(), sort_keys=True)

        def insert(db: sqlite3.Connection) -> str:
            if not again:
                same = db.execute("SELECT control_id FROM outbox WHERE sample_id = ? AND result_json = ? UNION ALL "
                                  "SELECT control_id FROM sent WHERE sample_id = ? AND result_json = ? LIMIT 1",
                                  (result.sample.sample_id, payload, result.sample.sample_id, payload)).fetchone()
                if same:
                    return same[0]
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox").fetchone()[0]
            db.execute("INSERT INTO outbox (control_id, sample_id, created_at, message, result_json, seq) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (control_id, result.sample.sample_id, _now(), message, payload, seq))
            return control_id

        return self._run(f"queue sample {result.sample.sample_id}", insert)

    def entries(self, state: str | None = None) -> list[Entry]:
        with self._connect() as db:
            try:
                rows = db.execute("SELECT control_id, sample_id, created_at, message, result_json, state, attempts, "
                                  "last_error FROM outbox" + (" WHERE state = ?" if state else "") + " ORDER BY seq",
                                  (state,) if state else ()).fetchall()
            except sqlite3.Error as e:
                raise self._fail(e, "read") from None
        return [Entry(r[0], r[1], r[2], r[3], SampleResult.from_dict(json.loads(r[4])), r[5], r[6], r[7]) for r in rows]

    def sent(self, sample_id: str | None = None) -> list[dict[str, Any]]:
        with self._connect() as db:
            try:
                rows = db.execute("SELECT control_id, sample_id, created_at, acked_at, message, result_json, attempts FROM sent"
                                  + (" WHERE sample_id = ?" if sample_id else "") + " ORDER BY acked_at, rowid",
                                  (sample_id,) if sample_id else ()).fetchall()
            except sqlite3.Error as e:
                raise self._fail(e, "read") from None
        keys = ("control_id", "sample_id", "created_at", "acked_at", "message", "result_json", "attempts")
        return [dict(zip(keys, r)) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            try:
                out = {PENDING: 0, HELD: 0}
                out.update(dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()))
                out["sent"] = db.execute("SELECT COUNT(*) FROM sent").fetchone()[0]
            except sqlite3.Error as e:
                raise self._fail(e, "read") from None
        return out

    # ---- what a send did ------------------------------------------------------------------
    def record_attempt(self, control_id: str, error: str) -> None:
        self._run("record a send attempt", lambda db: db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE control_id = ?", (error[:500], control_id)))

    def hold(self, control_id: str, error: str) -> None:
        self._run("hold a message", lambda db: db.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ? WHERE control_id = ?",
            (HELD, error[:500], control_id)))

    def acked(self, control_id: str) -> None:
        """AA: move the message to the sent history and out of the outbox, in one transaction."""
        def move(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO sent (control_id, sample_id, created_at, acked_at, message, result_json, attempts) "
                       "SELECT control_id, sample_id, created_at, ?, message, result_json, attempts + 1 FROM outbox "
                       "WHERE control_id = ?", (_now(), control_id))
            db.execute("DELETE FROM outbox WHERE control_id = ?", (control_id,))
        self._run("record an ACK", move)

    def prune_sent(self, keep_days: float) -> int:
        """Forget accepted messages older than keep_days (the history replay reads); returns how many."""
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - keep_days * 86400))
        return self._run("prune the sent history",
                         lambda db: db.execute("DELETE FROM sent WHERE acked_at < ?", (cutoff,)).rowcount)

    def replay(self, sample_id: str, build: Callable[[SampleResult, str], str], new_id: Callable[[], str]) -> list[str]:
        """Send a sample again. A message still in the outbox (held or pending) is released for another
        try under its own control id; a sample the LIS already accepted is queued as a new message
        (new control id: the LIS would drop a known one as a duplicate). [] if the sample is unknown."""
        waiting = [e for e in self.entries() if e.sample_id == sample_id]
        if waiting:
            self._run(f"release sample {sample_id}", lambda db: db.execute(
                "UPDATE outbox SET state = ?, attempts = 0, last_error = '' WHERE sample_id = ?", (PENDING, sample_id)))
            return [e.control_id for e in waiting]
        history = self.sent(sample_id)
        if not history:
            return []
        result = SampleResult.from_dict(json.loads(history[-1]["result_json"]))
        return [self.enqueue(result, build, new_id, again=True)]


class _Closing:
    """sqlite3's context manager commits but does not close; this one closes."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: Any) -> None:
        self.db.close()


@dataclass
class SendPolicy:
    attempts: int = 5  # per message and drain
    backoff_s: float = 1.0  # first wait; doubles per failed attempt
    backoff_max_s: float = 60.0


@dataclass
class DrainReport:
    sent: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    pending: int = 0
    error: str = ""  # why the drain stopped early (LIS unreachable, rejecting)

    def line(self) -> str:
        text = f"{len(self.sent)} sent, {len(self.held)} held (AE), {self.pending} still pending"
        return text + (f"; stopped: {self.error}" if self.error else "")


Transport = Callable[[Entry], Ack]


def drain(outbox: Outbox, transport: Transport, policy: SendPolicy | None = None,
          sleep: Callable[[float], None] = time.sleep, stop: Callable[[], bool] | None = None) -> DrainReport:
    """Send every pending message, oldest first, until each is acknowledged, held, or the LIS keeps
    failing (then the rest wait for the next drain: order is kept, nothing is dropped). `stop()`
    true ends the drain between two sends (a signal)."""
    policy = policy or SendPolicy()
    with outbox.draining():
        return _drain(outbox, transport, policy, sleep, stop or (lambda: False))


def _drain(outbox: Outbox, transport: Transport, policy: SendPolicy, sleep: Callable[[float], None],
           stop: Callable[[], bool]) -> DrainReport:
    report = DrainReport()
    for entry in outbox.entries(PENDING):
        done = False
        for attempt in range(max(1, policy.attempts)):
            if stop():
                break
            if attempt:
                sleep(min(policy.backoff_max_s, policy.backoff_s * 2 ** (attempt - 1)))
            try:
                ack = transport(entry)
            except TransportError as e:
                outbox.record_attempt(entry.control_id, str(e))
                report.error = str(e)
                log.warning("%s (sample %s): %s", entry.control_id, entry.sample_id, e)
                continue
            if ack.control_id != entry.control_id:  # an ACK for another message: ours is not acknowledged
                err = f"ACK for control id {ack.control_id!r}, expected {entry.control_id!r}"
                outbox.record_attempt(entry.control_id, err)
                report.error = err
                continue
            if ack.accepted:
                outbox.acked(entry.control_id)
                report.sent.append(entry.control_id)
                report.error = ""
                done = True
                break
            reason = f"{ack.code}" + (f": {ack.text}" if ack.text else "")
            if ack.code in ("AE", "CE"):
                outbox.hold(entry.control_id, reason)
                report.held.append(entry.control_id)
                report.error = ""
                done = True
                break
            outbox.record_attempt(entry.control_id, reason)  # AR / CR: rejected for now, try again
            report.error = f"sample {entry.sample_id} rejected ({reason})"
        if not done or stop():
            break  # the LIS is not taking messages (or we were asked to stop): keep order, try again later
    report.pending = outbox.counts()[PENDING]
    return report


def iter_messages(outbox: Outbox, include_sent: bool = False) -> Iterator[tuple[str, str, str, SampleResult]]:
    """(control_id, sample_id, message, result) of every queued (and optionally sent) message."""
    for e in outbox.entries():
        yield e.control_id, e.sample_id, e.message, e.result
    if include_sent:
        for row in outbox.sent():
            yield row["control_id"], row["sample_id"], row["message"], SampleResult.from_dict(json.loads(row["result_json"]))
