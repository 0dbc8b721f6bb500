"""Colour smear photographs with white-cell boxes -> a four-light development set (wbc-synth frames layout).

    .venv/bin/python scripts/smear_to_fourlight.py ../shared/data/chula_frames/images ../shared/data/chula_frames/boxes.csv build/chula4
    .venv/bin/wbc-calib optics --source build/chula4/frames --out build/chula4/profile.json
    .venv/bin/wbc-run build/chula4/frames --profile build/chula4/profile.json --out build/chula4/results.jsonl

See docs/runtime-frontend.md ("Real frames as four-light sets"); needs scikit-image (`pip install -e '.[realdata]'`).
"""
from __future__ import annotations

import sys

from wbc_edge.data.smear_frames import convert_smear_frames
from wbc_edge.errors import WbcError

if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        print(f"wrote {convert_smear_frames(*sys.argv[1:])}")
    except WbcError as e:
        print(f"smear_to_fourlight: {e}", file=sys.stderr)
        sys.exit(2)
