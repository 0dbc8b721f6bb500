"""The outbox against a real MLLP listener on 127.0.0.1: AA, AE, AR, silence, a drop, a listener down."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

pytest.importorskip("hl7apy")

from wbc_edge.lis import Outbox, OutboxError, SendPolicy, drain, mllp_transport, queue_result  # noqa: E402
from wbc_edge.lis.mllp import TransportError, frame, parse_ack, send_message  # noqa: E402

FAST = SendPolicy(attempts=3, backoff_s=0.01, backoff_max_s=0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queued(tmp_path, result_of, samples=("ACC-1",)) -> tuple[Outbox, dict[str, str]]:
    box = Outbox(tmp_path / "outbox.sqlite")
    ids = {s: queue_result(box, result_of(sample_id=s)) for s in samples}
    return box, ids


def test_framing_and_ack_parsing():
    assert frame("MSH|x") == b"\x0bMSH|x\x1c\x0d"
    with pytest.raises(TransportError, match="framing byte"):
        frame("MSH|\x1c")
    ack = parse_ack(b"MSH|^~\\&|LIS||WBC||20261202||ACK|A1|P|2.5.1\rMSA|AE|WE42|bad OBX\r")
    assert (ack.code, ack.control_id, ack.text, ack.accepted) == ("AE", "WE42", "bad OBX", False)
    with pytest.raises(TransportError, match="no MSA"):
        parse_ack(b"MSH|^~\\&|LIS\rPID|1\r")
    with pytest.raises(TransportError, match="not an HL7"):
        parse_ack(b"HTTP/1.1 400 Bad Request")


def test_aa_removes_the_message_and_keeps_it_in_history(tmp_path, result_of, listener):
    box, ids = queued(tmp_path, result_of, ("ACC-1", "ACC-2"))
    report = drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5), FAST)
    assert report.sent == [ids["ACC-1"], ids["ACC-2"]] and not report.error
    assert listener.control_ids() == [ids["ACC-1"], ids["ACC-2"]]  # in queue order, once each
    assert [r.sample_id for r in listener.received] == ["ACC-1", "ACC-2"]
    assert box.counts() == {"pending": 0, "held": 0, "sent": 2}
    stored = {row["control_id"]: row["message"] for row in box.sent()}
    assert [stored[r.control_id] for r in listener.received] == [r.text for r in listener.received]  # same bytes


def test_ae_holds_the_message_for_the_engineer(tmp_path, result_of, listener):
    box, ids = queued(tmp_path, result_of, ("ACC-1", "ACC-2"))
    listener.script = ["AE"]
    report = drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5), FAST)
    assert report.held == [ids["ACC-1"]] and report.sent == [ids["ACC-2"]]
    (held,) = box.entries("held")
    assert held.control_id == ids["ACC-1"] and held.last_error.startswith("AE")
    # replay releases it under its own control id; the LIS now accepts it
    assert box.replay("ACC-1", None, None) == [ids["ACC-1"]]
    assert drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5), FAST).sent == [ids["ACC-1"]]
    assert listener.control_ids() == [ids["ACC-1"], ids["ACC-2"], ids["ACC-1"]]
    assert box.counts() == {"pending": 0, "held": 0, "sent": 2}


def test_ar_is_retried_with_backoff_under_the_same_control_id(tmp_path, result_of, listener):
    box, ids = queued(tmp_path, result_of)
    listener.script = ["AR", "AR"]
    waits: list[float] = []
    report = drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5),
                   SendPolicy(attempts=4, backoff_s=0.5, backoff_max_s=0.75), sleep=waits.append)
    assert report.sent == [ids["ACC-1"]]
    assert listener.control_ids() == [ids["ACC-1"]] * 3
    assert waits == [0.5, 0.75]  # doubling, capped


def test_silence_times_out_and_the_message_stays(tmp_path, result_of, listener):
    box, ids = queued(tmp_path, result_of, ("ACC-1", "ACC-2"))
    listener.default = "silent"
    t0 = time.monotonic()
    report = drain(box, mllp_transport("127.0.0.1", listener.port, timeout=0.3), FAST)
    assert time.monotonic() - t0 < 5
    assert report.sent == [] and report.pending == 2 and "no ACK within 0.3 s" in report.error
    assert listener.control_ids() == [ids["ACC-1"]] * 3  # ACC-2 waits behind it: order kept
    (first, second) = box.entries()
    assert first.attempts == 3 and second.attempts == 0
    listener.default = "AA"
    assert drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5), FAST).sent == [ids["ACC-1"], ids["ACC-2"]]


def test_dropped_mid_message_is_resent(tmp_path, result_of, listener):
    box, ids = queued(tmp_path, result_of)
    listener.script = ["drop", "drop"]
    report = drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5), FAST)
    assert report.sent == [ids["ACC-1"]] and listener.connections == 3
    assert listener.control_ids() == [ids["ACC-1"]]  # only the third try arrived whole


def test_listener_down_at_start_then_up(tmp_path, result_of, make_listener):
    box, ids = queued(tmp_path, result_of)
    port = free_port()
    report = drain(box, mllp_transport("127.0.0.1", port, timeout=1), FAST)
    assert report.sent == [] and "cannot connect" in report.error and report.pending == 1
    lst = make_listener(port)
    report = drain(box, mllp_transport("127.0.0.1", port, timeout=5), FAST)
    assert report.sent == [ids["ACC-1"]] and lst.control_ids() == [ids["ACC-1"]]
    assert box.entries() == [] and box.sent()[0]["attempts"] == FAST.attempts + 1


def test_unreachable_host_is_one_line_and_loses_nothing(tmp_path, result_of, capsys):
    from wbc_edge.cli.lis import main

    box, ids = queued(tmp_path, result_of)
    port = free_port()  # nothing listens there
    rc = main(["--outbox", str(box.path), "send", "--host", "127.0.0.1", "--port", str(port),
               "--attempts", "2", "--backoff", "0.01", "--timeout", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 1 and len(out) == 1 and "cannot connect" in out[0] and "1 still pending" in out[0]
    (entry,) = box.entries()
    assert entry.control_id == ids["ACC-1"] and entry.attempts == 2


def test_ack_for_another_control_id_is_not_an_ack(tmp_path, result_of):
    """A listener that answers AA with a wrong MSA-2 has not acknowledged our message."""
    import threading

    box, ids = queued(tmp_path, result_of)
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)

    def serve():
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(frame("MSH|^~\\&|LIS||WBC||20261202||ACK|A1|P|2.5.1\rMSA|AA|WE-SOMEONE-ELSE\r"))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    report = drain(box, mllp_transport("127.0.0.1", srv.getsockname()[1], timeout=2),
                   SendPolicy(attempts=2, backoff_s=0.01))
    t.join(5)
    srv.close()
    assert report.sent == [] and "expected" in report.error and box.counts()["pending"] == 1


def test_sigkill_between_commit_and_ack_then_restart(tmp_path, result_of, listener):
    """Killed while waiting for the ACK of the first of three results: after a restart the listener has
    every result under one control id each (the first twice, as a resend), and the outbox is empty."""
    box, ids = queued(tmp_path, result_of, ("ACC-1", "ACC-2", "ACC-3"))
    listener.script = ["silent"]
    cmd = [sys.executable, "-m", "wbc_edge.cli.lis", "--outbox", str(box.path), "send", "--host", "127.0.0.1",
           "--port", str(listener.port), "--timeout", "60", "--attempts", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert listener.wait_for(1, timeout=30), "the sender never sent"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert box.counts() == {"pending": 3, "held": 0, "sent": 0}  # committed, not lost
    r = subprocess.run(cmd[:-4] + ["--timeout", "5", "--attempts", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    by_sample: dict[str, set[str]] = {}
    for rec in listener.received:
        by_sample.setdefault(rec.sample_id, set()).add(rec.control_id)
    assert by_sample == {s: {cid} for s, cid in ids.items()}  # one control id per result, never a new one
    assert listener.control_ids() == [ids["ACC-1"], ids["ACC-1"], ids["ACC-2"], ids["ACC-3"]]
    assert box.counts() == {"pending": 0, "held": 0, "sent": 3}


def test_full_outbox_is_one_line_and_keeps_what_it_has(tmp_path, result_of, capsys):
    box = Outbox(tmp_path / "small.sqlite", max_bytes=48 * 1024)
    kept: list[str] = []
    with pytest.raises(OutboxError) as e:
        for i in range(200):  # bounded: a message is ~3 KB, the cap is 48 KB
            kept.append(queue_result(box, result_of(sample_id=f"ACC-{i}")))
    msg = str(e.value)
    assert "\n" not in msg and "full" in msg and "nothing was queued" in msg, msg
    assert 1 <= len(kept) < 200
    assert [x.control_id for x in box.entries()] == kept  # everything committed before is intact
    with sqlite3.connect(box.path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_outbox_in_an_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError) as e:
        Outbox(blocker / "outbox.sqlite")  # a path under a regular file: no directory can exist there
    assert "\n" not in str(e.value) and str(blocker) in str(e.value)


def test_direct_send_message_times_out_on_a_silent_peer(listener, result_of):
    from wbc_edge.lis.hl7v2 import build_oru_r01

    listener.default = "silent"
    with pytest.raises(TransportError, match="no ACK within 0.2 s"):
        send_message("127.0.0.1", listener.port, build_oru_r01(result_of(), "WE9"), timeout=0.2)


def test_one_sender_at_a_time(tmp_path, result_of, listener):
    box, ids = queued(tmp_path, result_of)
    with box.draining():
        with pytest.raises(OutboxError, match="another sender is draining it"):
            drain(Outbox(box.path), mllp_transport("127.0.0.1", listener.port, timeout=5), FAST)
    assert listener.received == [] and box.counts()["pending"] == 1
    assert drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5), FAST).sent == [ids["ACC-1"]]


def test_sent_history_is_pruned_by_age(tmp_path, result_of, listener):
    box, ids = queued(tmp_path, result_of, ("ACC-1", "ACC-2"))
    drain(box, mllp_transport("127.0.0.1", listener.port, timeout=5), FAST)
    with sqlite3.connect(box.path) as db:  # ACC-1 was accepted months before today
        db.execute("UPDATE sent SET acked_at = '2026-08-01T00:00:00Z' WHERE sample_id = 'ACC-1'")
    assert box.prune_sent(keep_days=200 * 365) == 0
    assert box.prune_sent(keep_days=90) == 1
    assert [r["sample_id"] for r in box.sent()] == ["ACC-2"]


def test_send_every_waits_out_an_lis_that_is_down_and_stops_on_sigterm(tmp_path, result_of, make_listener):
    """`wbc-lis send --every`: the LIS is down when the sender starts and comes up later; the result
    arrives once, under its control id, and SIGTERM ends the sender cleanly (exit 0)."""
    box, ids = queued(tmp_path, result_of)
    port = free_port()
    cmd = [sys.executable, "-m", "wbc_edge.cli.lis", "--outbox", str(box.path), "send", "--host", "127.0.0.1",
           "--port", str(port), "--timeout", "2", "--attempts", "2", "--backoff", "0.05", "--every", "0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while box.entries()[0].attempts < 2 and time.monotonic() < deadline:  # it tried while the LIS was down
            time.sleep(0.05)
        assert box.entries()[0].attempts >= 2
        lst = make_listener(port)
        assert lst.wait_for(1, timeout=20)
        deadline = time.monotonic() + 20
        while box.counts()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    assert lst.control_ids() == [ids["ACC-1"]] and box.counts() == {"pending": 0, "held": 0, "sent": 1}
    assert "1 sent" in out
