"""wbc-run: stream four-light camera frames through the classifier to a differential count.

    wbc-run                                   simulated camera, packaged demo model
    wbc-run --camera /dev/video0 --model model.wbc --max-cells 200 --out results.jsonl --report report.html
    wbc-run summarize results.jsonl           rebuild the differential from a results file
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from wbc_edge import precisions
from wbc_edge.cli import args
from wbc_edge.outputs import Input, Output, check_paths, source_input
from wbc_edge.errors import WbcError

log = logging.getLogger("wbc_edge.cli.run")

SOURCE_USAGE = """\
sources (SOURCE or --camera):
  synthetic://[?seed=N&sets=N]    built-in simulated four-light camera (default); also fps=F,
                                  realtime=1, loop=1, drop_every=K, duplicate_every=K, corrupt_every=K
  /dev/video0, v4l2:///dev/video0 USB / V4L2 camera (one-frame buffer, frames never stale)
  csi://0                         Jetson CSI camera through GStreamer nvarguscamerasrc
  gst:PIPELINE                    any GStreamer pipeline ending in appsink
  rtsp://HOST/PATH                network stream
  clip.mp4, file://clip.mp4       video file (every frame is read, none dropped)
  frames/                         image folder (sorted by name; as written by `wbc-synth frames`)

backends and precisions:
  --backend auto        TensorRT when installed with a CUDA GPU, else ONNX Runtime (CUDA, else CPU)
  --precision auto      the gate-accepted INT8 model for that backend if the bundle has one, else FP32

signals: SIGINT/SIGTERM stop reading, finish what was read and write the summary; SIGUSR1 prints stats.
"""


def default_model() -> Path | None:
    import wbc_edge

    path = Path(wbc_edge.__file__).parent / "demo" / "demo.wbc"
    return path if path.is_file() else None


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = args.Parser("wbc-run", description=__doc__, epilog=SOURCE_USAGE, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE", help="frame source URI (default: synthetic://)")
    p.add_argument("--camera", metavar="DEV", help="camera device, e.g. /dev/video0 (same as giving it as SOURCE)")
    p.add_argument("--model", metavar="BUNDLE", help="model bundle .wbc (default: the packaged demo bundle)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--precision", default="auto", choices=precisions.CHOICES)
    p.add_argument("--engine-cache", metavar="DIR", help="TensorRT engine cache folder (default: the TensorRT backend's)")
    p.add_argument("--engine", metavar="FILE", help="a prebuilt TensorRT engine (wbc-engine build --output), checked against the bundle and this GPU")
    p.add_argument("--threads", type=args.THREADS, default=None, metavar="N", help="ONNX Runtime intra-op threads (default: ORT's choice)")
    p.add_argument("--batch", type=args.BATCH, default=8, metavar="N", help="cells per inference batch (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=args.MILLISECONDS, default=20.0, metavar="MS",
                   help="run a partial batch when its oldest cell waited this long (default: %(default)s)")
    p.add_argument("--max-cells", type=args.COUNT, default=None, metavar="N", help="stop after N cells (an analyzer's differential: 200)")
    p.add_argument("--duration", type=args.SECONDS, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--missing-light", default="skip", choices=("skip", "heads"),
                   help="a set missing a light: skip it, or classify with the present lights' heads (flagged)")
    p.add_argument("--order", default=None, metavar="L1,L2,..", help="the camera's light cycle (default: the frames' meta.json, else the model's lights)")
    p.add_argument("--crop-px", type=args.PIXELS, default=None, metavar="PX", help="crop window in frame pixels (default: from the bundle)")
    p.add_argument("--profile", metavar="FILE", default=None,
                   help="device profile JSON (camera um/px, from `wbc-calib optics`); default: the scale is measured "
                        "from the first frames' red cells (the simulated camera states its own)")
    p.add_argument("--align", action="store_true", help="correct small shifts between lights before cropping")
    p.add_argument("--estimator", default=None, choices=("em", "acc", "pacc", "cc"),
                   help="how the differential is estimated from the calibrated probabilities (default: em, chosen by "
                        "benchmarks/count.py); the argmax counts are always shown beside it")
    p.add_argument("--out", metavar="FILE", help="per-cell results, JSON lines, appended and flushed per cell")
    p.add_argument("--sample-id", metavar="ID", help="the sample's accession id, recorded in the results header; "
                   "a run without one is counted but never sent to the LIS (wbc-lis)")
    p.add_argument("--patient-id", metavar="ID", help="the patient id the LIS files the sample under (optional)")
    p.add_argument("--order-id", metavar="ID", help="the order (placer) id of the request (optional)")
    p.add_argument("--device-serial", metavar="SN", help="this analyzer's serial (default: the device profile's, if any)")
    p.add_argument("--report", metavar="FILE", help="write a self-contained HTML report at the end")
    p.add_argument("--display", action="store_true", help="show frames with boxes and labels (needs a display)")
    p.add_argument("--save-video", metavar="FILE", help="record the annotated bright-field frames (.mp4, .avi)")
    p.add_argument("--stats", action="store_true", help="print per-stage latency and throughput at the end")
    p.add_argument("--stats-every", type=args.SECONDS, default=None, metavar="S", help="also print stats every S seconds")
    p.add_argument("--quiet", action="store_true", help="no live status line")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def get_summarize_parser() -> argparse.ArgumentParser:
    p = args.Parser("wbc-run summarize", description="Rebuild a run's differential from its results file.")
    p.add_argument("results", help="results.jsonl written by wbc-run --out")
    p.add_argument("--report", metavar="FILE", help="also write the HTML report (without the cell gallery)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


class StatusLine:
    """The running differential on stderr: rewritten in place on a terminal, periodic lines otherwise."""

    def __init__(self, enabled: bool, stream: Any = sys.stderr):
        self.enabled = enabled
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every = 0.25 if self.tty else 2.0
        self._last = 0.0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every):
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def summarize_main(argv: list[str]) -> int:
    from wbc_edge.runtime.results import summarize

    a = get_summarize_parser().parse_args(argv)
    check_paths([Output("--report", a.report, "report")], [Input("RESULTS", a.results)])
    summary = summarize(a.results)
    if a.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.format_table())
        if summary.runs_in_file > 1:
            print(f"the file holds {summary.runs_in_file} runs; this is the last one")
        if summary.bad_lines:
            print(f"{summary.bad_lines} unparsable line(s) skipped (a run killed mid-write)")
    if a.report:
        from wbc_edge.runtime.report import write_report

        write_report(a.report, summary)
        print(f"report: {a.report}")
    return 0


def run(a: argparse.Namespace) -> int:
    from wbc_edge.runtime.pipeline import Analyzer
    from wbc_edge.runtime.results import OutputError
    from wbc_edge.runtime.sources import open_source
    from wbc_edge.lis.identity import check_identifier, sample_identity

    sample = sample_identity(a.sample_id, a.patient_id, a.order_id)  # a bad id stops before the camera opens
    model = a.model or default_model()
    if model is None:
        raise WbcError("no --model given and no packaged demo bundle (wbc_edge/demo/demo.wbc); export one with wbc-export")
    uri = a.camera or a.source or "synthetic://"
    check_paths([Output("--out", a.out, "results"), Output("--report", a.report, "report"),
                 Output("--save-video", a.save_video, "video")],
                [Input("--model", model), Input("--engine", a.engine), Input("--profile", a.profile),
                 *filter(None, [source_input("SOURCE", uri)])])
    order = [s.strip() for s in a.order.split(",") if s.strip()] if a.order else None

    engine_runner = None
    if a.engine:
        from wbc_edge.runtime.backends import open_engine

        engine_runner = open_engine(model, a.engine)
    analyzer = Analyzer(model, backend=a.backend, precision=a.precision, batch_size=a.batch, max_wait_ms=a.max_wait_ms,
                        missing_light=a.missing_light, crop_px=a.crop_px, align=a.align, light_order=order,
                        intra_op_threads=a.threads, engine_cache=a.engine_cache, gallery_per_class=8 if a.report else 0,
                        estimator=a.estimator, profile=a.profile or "auto", runner=engine_runner)
    if a.device_serial:
        analyzer.device_serial = check_identifier(a.device_serial, "device serial")
    status = StatusLine(enabled=not a.quiet)
    if not a.quiet:
        print(f"wbc-run: {uri} -> {analyzer.runner.choice_reason or analyzer.description}", file=sys.stderr)

    display = video = None
    if a.display or a.save_video:
        from wbc_edge.runtime import display as disp

        display = disp.Display() if a.display else None
        video = disp.VideoRecorder(a.save_video) if a.save_video else None

    def stop_on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if analyzer.stopping:
            return
        print(f"\nwbc-run: {name}: stopping; finishing the cells already read", file=sys.stderr)
        analyzer.stop(f"interrupted ({name})")

    def print_stats(*_: Any) -> None:
        print("\n" + analyzer.stats.format(), file=sys.stderr)

    previous = {s: signal.signal(s, stop_on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if hasattr(signal, "SIGUSR1"):
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, print_stats)
    last_stats = [time.monotonic()]

    def on_result(_res: Any) -> None:
        rate = analyzer.stats.counters.get("cells", 0) / max(analyzer.stats.elapsed, 1e-9)
        status.update(f"{analyzer.differential.status_line()}{analyzer.estimate_status()}  [{rate:.1f} cells/s]")

    def on_set(light_set: Any, results: list) -> None:
        if a.stats_every and time.monotonic() - last_stats[0] >= a.stats_every:
            last_stats[0] = time.monotonic()
            print_stats()
        if display is None and video is None:
            return
        from wbc_edge.runtime.display import annotate, pick_view_image

        view = pick_view_image(dict(light_set.images))
        if view is None:
            return
        frame = annotate(view, results, list(analyzer.spec.classes), status=analyzer.differential.status_line())
        if video is not None:
            video.write(frame)
        if display is not None and not display.show(frame):
            analyzer.stop("closed by the user")

    source = open_source(uri, light_order=order, default_light_order=analyzer.light_order)
    try:
        with analyzer:
            summary = analyzer.analyze(source, sink=a.out, max_cells=a.max_cells, duration=a.duration,
                                       on_result=on_result, on_set=on_set, sample=sample)
    except OutputError:
        status.end()
        if analyzer.differential.total:  # what was counted (and written) before the output failed
            from wbc_edge.runtime.results import RunSummary

            print(RunSummary.from_differential(analyzer.differential).format_table())
        raise
    finally:
        source.close()
        for s, h in previous.items():
            signal.signal(s, h)
        if display is not None:
            display.close()
        if video is not None:
            video.close()
        status.end()

    print(summary.format_table())
    print(f"scale: {summary.scale}")
    print(summary.counts_line())
    if summary.cells_discarded:
        print(f"{summary.cells_discarded} cell(s) classified after the {a.max_cells}-cell limit were not counted"
              + (" (kept in the results file, flagged beyond_max_cells)" if a.out else ""))
    if a.stats:
        print(analyzer.stats.format())
    print(f"sample: {sample.sample_id}" if sample else "sample: none given (counted, never sent to the LIS)")
    if a.out:
        print(f"results: {a.out}")
    if a.report:
        from wbc_edge.runtime.report import write_report

        write_report(a.report, summary, analyzer.gallery)
        print(f"report: {a.report}")
    if a.save_video and video is not None:
        print(f"video: {a.save_video} ({video.frames_written} frames)")
    return 1 if summary.stop_reason.startswith("source error") else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["summarize"]:
            return summarize_main(argv[1:])
        a = get_args_parser().parse_args(argv)
        logging.basicConfig(level=getattr(logging, a.log_level), format="%(levelname)s %(name)s: %(message)s")
        return run(a)
    except WbcError as e:
        print(f"wbc-run: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
