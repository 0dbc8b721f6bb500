"""Run a console command's main() in-process and get its exit code, also when argparse exits."""
from __future__ import annotations

from typing import Callable, Sequence


def exit_code(main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    try:
        return main(list(argv))
    except SystemExit as e:  # a parse-time mistake: one line, exit 2
        return int(e.code)
