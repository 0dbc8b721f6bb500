"""The wbc-edge runtime: camera frames -> four-light sets -> cell crops -> classifier -> differential.

Embedding API (no torch, imported lazily so `import wbc_edge.runtime` stays cheap):

    from wbc_edge.runtime import Analyzer, open_source

    with Analyzer("model.wbc", missing_light="heads") as analyzer:
        summary = analyzer.analyze(open_source("/dev/video0"), sink="results.jsonl", max_cells=200)
    print(summary.format_table())          # the estimated differential beside the argmax counts

The differential from any cells' probabilities: `params_for_bundle(bundle, precision)` and
`estimate_shares(probs, params)` (wbc_edge.runtime.quantify). See docs/runtime.md.
"""
from __future__ import annotations

from wbc_edge._lazy import lazy_exports

_EXPORTS = {
    "open_source": "wbc_edge.runtime.sources",
    "Frame": "wbc_edge.runtime.sources",
    "LightSet": "wbc_edge.runtime.assembler",
    "Analyzer": "wbc_edge.runtime.pipeline",
    "CellResult": "wbc_edge.runtime.results",
    "Result": "wbc_edge.runtime.results",
    "RunSummary": "wbc_edge.runtime.results",
    "Differential": "wbc_edge.runtime.results",
    "ResultWriter": "wbc_edge.runtime.results",
    "summarize": "wbc_edge.runtime.results",
    "estimate_shares": "wbc_edge.runtime.quantify",
    "params_for_bundle": "wbc_edge.runtime.quantify",
    "open_backend": "wbc_edge.runtime.backends",
    "Runner": "wbc_edge.runtime.backends.base",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports("wbc_edge.runtime", _EXPORTS, globals())
