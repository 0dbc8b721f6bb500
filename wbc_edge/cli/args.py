"""Argument parsing shared by every command: one-line errors and range-checked numbers.

Every numeric option takes one of the types below, so its valid range is checked at parse time
(before any work) with a one-line error, and its help says the range.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from wbc_edge.spec import INPUT_SIZE_RANGE


def run_reporting_errors(prog: str, run, args: argparse.Namespace, path_hint: object = None) -> int:
    """`run(args)`, with a user mistake or an OS error on a file as one line on stderr and exit code 2."""
    from wbc_edge.errors import WbcError

    try:
        return run(args)
    except WbcError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: {getattr(e, 'filename', None) or path_hint}: {e.strerror or e}", file=sys.stderr)
        return 2


class Parser(argparse.ArgumentParser):
    """argparse with its mistakes on one line (no usage dump), exit code 2 as before."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Number:
    """An int or float option within [lo, hi] (lo excluded when lo_open)."""

    kind: type = int
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    unit: str = ""

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.describe()

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None and not self.lo_open:
            rng = f" in {self.lo:g}..{self.hi:g}"
        else:
            parts = []
            if self.lo is not None:
                parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
            if self.hi is not None:
                parts.append(f"<= {self.hi:g}")
            rng = " " + " and ".join(parts) if parts else ""
        return what + rng + (f" ({self.unit})" if self.unit else "")

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"'{text}' is not {self.describe()}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {self.describe()}")
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and value > self.hi
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is not {self.describe()}")
        return value

    def help(self, text: str) -> str:
        """`text` with the valid range appended, for add_argument(help=...)."""
        return f"{text}; {self.describe()}"


COUNT = Number(int, 1)  # cells, sets, frames, epochs: at least one
INDEX = Number(int, 0)  # a fold, a seed, a DLA core
THREADS = Number(int, 1, 1024)
BATCH = Number(int, 1, 4096)
SECONDS = Number(float, 0, lo_open=True, unit="seconds")
MILLISECONDS = Number(float, 0, 60_000, unit="ms")
PERCENT = Number(float, 0, 100, unit="%")
POINTS = Number(float, 0, 100, unit="weighted-F1 points")
FRACTION = Number(float, 0, 1)
POSITIVE = Number(float, 0, lo_open=True)
PIXELS = Number(int, 8, 4096, unit="px")
WORKSPACE_MB = Number(int, 16, 1 << 20, unit="MiB")
OPSET = Number(int, 13, 21)
PORT = Number(int, 1, 65535)
NONNEGATIVE = Number(float, 0)
RBC_UM = Number(float, 3, 20, unit="um")
UM_PER_PX = Number(float, 0.005, 50, unit="um/px")  # a camera or a crop set: the device profile's range
FPS = Number(float, 0, 1000, lo_open=True, unit="frames/s")
FRAME_PX = Number(int, 64, 16384, unit="px")
MAGNIFICATION = Number(float, 0.1, 10)
INPUT_PX = Number(int, *INPUT_SIZE_RANGE, unit="px")
