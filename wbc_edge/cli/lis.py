"""wbc-lis: results to the laboratory information system (HL7 v2 over MLLP, or FHIR), from a durable outbox.

    wbc-lis queue results.jsonl [--final]          commit the run's ORU^R01 to the outbox
    wbc-lis send --host LIS --port 2575            drain the outbox (AA removes, AE holds, else retry)
    wbc-lis send --fhir-url http://fhir/base       the same outbox as FHIR transactions
    wbc-lis status                                 what is pending, held, sent
    wbc-lis replay SAMPLE                          send a sample again (held, or already accepted)
    wbc-lis export --out DIR [--fhir] [--all]      messages as .hl7 files (and FHIR .json) for the engineer

The outbox is --outbox, else $WBC_LIS_OUTBOX, else ./lis-outbox.sqlite. Needs the lis extra.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from wbc_edge.cli import args
from wbc_edge.errors import WbcError
from wbc_edge.outputs import Input, Output, check_paths

DEFAULT_OUTBOX = "lis-outbox.sqlite"


def get_args_parser() -> argparse.ArgumentParser:
    p = args.Parser("wbc-lis", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--outbox", default=os.environ.get("WBC_LIS_OUTBOX", DEFAULT_OUTBOX), metavar="FILE",
                   help="the outbox (SQLite; default: $WBC_LIS_OUTBOX or %(default)s)")
    p.add_argument("--outbox-max-mb", type=args.POSITIVE, default=None, metavar="MB",
                   help="cap the outbox file (a queue beyond it fails, one line, nothing lost)")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("queue", help="commit a run's result to the outbox")
    q.add_argument("results", help="results.jsonl written by wbc-run --out (with --sample-id)")
    q.add_argument("--final", action="store_true", help="reviewed and released: result status F (default P)")
    q.add_argument("--reference-table", metavar="JSON", help="the laboratory's reference intervals (default: packaged)")

    s = sub.add_parser("send", help="drain the outbox to the LIS")
    s.add_argument("--host", default=os.environ.get("WBC_LIS_HOST"), help="LIS host (default: $WBC_LIS_HOST)")
    s.add_argument("--port", type=args.PORT, default=int(os.environ.get("WBC_LIS_PORT", "0")) or None,
                   help="LIS MLLP port (default: $WBC_LIS_PORT)")
    s.add_argument("--fhir-url", metavar="URL", help="send FHIR transactions to this base URL instead of MLLP")
    s.add_argument("--timeout", type=args.SECONDS, default=10.0, metavar="S", help="wait this long for an ACK (default: %(default)s)")
    s.add_argument("--attempts", type=args.COUNT, default=5, metavar="N", help="tries per message per drain (default: %(default)s)")
    s.add_argument("--backoff", type=args.NONNEGATIVE, default=1.0, metavar="S",
                   help="first wait between tries, doubling, at most 60 s (default: %(default)s)")
    s.add_argument("--every", type=args.NONNEGATIVE, default=0.0, metavar="S",
                   help="keep sending: drain again every S seconds until SIGTERM/SIGINT (default: once)")
    s.add_argument("--keep-sent-days", type=args.NONNEGATIVE, default=90.0, metavar="D",
                   help="forget accepted messages older than D days (replay reads them; default: %(default)s)")

    sub.add_parser("status", help="what is pending, held and sent")

    r = sub.add_parser("replay", help="send a sample again")
    r.add_argument("sample", help="sample (accession) id")

    e = sub.add_parser("export", help="write the messages as files")
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--fhir", action="store_true", help="also the FHIR Bundle of each, as JSON")
    e.add_argument("--all", action="store_true", help="include messages the LIS already accepted")
    return p


def _outbox(a: argparse.Namespace, create: bool = False):
    from wbc_edge.lis import Outbox

    if not create and not Path(a.outbox).is_file():  # a mistyped path must not look like an empty outbox
        raise WbcError(f"no outbox at {a.outbox} (nothing queued there yet; --outbox or $WBC_LIS_OUTBOX)")
    cap = int(a.outbox_max_mb * 1024 * 1024) if a.outbox_max_mb else None
    return Outbox(a.outbox, max_bytes=cap)


def cmd_queue(a: argparse.Namespace) -> int:
    from wbc_edge.lis import queue_results_file

    box = _outbox(a, create=True)
    known = {e.control_id for e in box.entries()} | {row["control_id"] for row in box.sent()}
    control_id = queue_results_file(box, a.results, reviewed=a.final, reference_table=a.reference_table)
    if control_id in known:
        print(f"{a.results}: this result is already in {a.outbox} as {control_id}; not queued twice")
        return 0
    entry = next(e for e in box.entries() if e.control_id == control_id)
    print(f"queued sample {entry.sample_id} as {control_id} ({entry.result.status}, "
          f"{entry.result.n_cells} cells{', needs review' if entry.result.review else ''}) in {a.outbox}")
    return 0


def cmd_send(a: argparse.Namespace) -> int:
    from wbc_edge.lis import SendPolicy, drain, fhir_transport, mllp_transport

    if a.fhir_url:
        transport = fhir_transport(a.fhir_url, timeout=a.timeout)
        where = a.fhir_url
    elif a.host and a.port:
        transport = mllp_transport(a.host, a.port, timeout=a.timeout)
        where = f"{a.host}:{a.port}"
    else:
        raise WbcError("send: give --host and --port (MLLP) or --fhir-url")
    box = _outbox(a)
    policy = SendPolicy(attempts=max(1, a.attempts), backoff_s=max(0.0, a.backoff))
    stop = _StopFlag() if a.every > 0 else None
    while True:
        report = drain(box, transport, policy, sleep=stop.sleep if stop else time.sleep,
                       stop=(lambda: stop.stopped) if stop else None)
        pruned = box.prune_sent(a.keep_sent_days) if a.keep_sent_days > 0 else 0
        if stop is None or report.sent or report.held or report.error:
            print(f"{where}: {report.line()}" + (f"; {pruned} accepted message(s) older than "
                                                f"{a.keep_sent_days:g} days forgotten" if pruned else ""), flush=True)
        if stop is None:
            return 0 if not report.error else 1
        stop.sleep(a.every)
        if stop.stopped:
            return 0


class _StopFlag:
    """SIGTERM/SIGINT end `send --every` between two messages; waits are cut short, nothing is half-sent."""

    def __init__(self) -> None:
        self.stopped = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)

    def _stop(self, *_: object) -> None:
        self.stopped = True

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopped and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def cmd_status(a: argparse.Namespace) -> int:
    box = _outbox(a)
    counts = box.counts()
    print(f"{a.outbox}: {counts['pending']} pending, {counts['held']} held, {counts['sent']} sent")
    for e in box.entries():
        err = f"  last error: {e.last_error}" if e.last_error else ""
        print(f"  {e.state:<8} {e.control_id}  sample {e.sample_id}  queued {e.created_at}  "
              f"{e.attempts} attempt(s){err}")
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from wbc_edge.lis.hl7v2 import build_oru_r01, new_control_id
    from wbc_edge.lis.identity import check_identifier

    sample = check_identifier(a.sample, "sample id")
    ids = _outbox(a).replay(sample, build_oru_r01, new_control_id)
    if not ids:
        raise WbcError(f"replay: sample {sample} is not in {a.outbox} (never queued)")
    print(f"sample {sample}: {', '.join(ids)} pending; run wbc-lis send")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from wbc_edge.bundle import atomic_write_text
    from wbc_edge.lis.outbox import iter_messages

    out = Path(a.out)
    n = 0
    for control_id, sample_id, message, result in iter_messages(_outbox(a), include_sent=a.all):
        stem = out / f"{sample_id}_{control_id}"
        atomic_write_text(stem.with_suffix(".hl7"), message)  # the bytes on the wire (segments end in CR)
        if a.fhir:
            from wbc_edge.lis.fhir import build_bundle, write_bundle_json

            write_bundle_json(stem.with_suffix(".fhir.json"), build_bundle(result, control_id))
        n += 1
    print(f"{n} message(s) written to {out}")
    return 0


COMMANDS = {"queue": cmd_queue, "send": cmd_send, "status": cmd_status, "replay": cmd_replay, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, a.log_level), format="%(levelname)s %(name)s: %(message)s")
    try:
        check_paths([Output("--outbox", a.outbox, "outbox"), Output("--out", getattr(a, "out", None), "dir")],
                    [Input("RESULTS", getattr(a, "results", None)), Input("--reference-table", getattr(a, "reference_table", None))])
        return COMMANDS[a.command](a)
    except WbcError as e:
        print(f"wbc-lis: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
