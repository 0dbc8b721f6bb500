"""wbc-bench: throughput, latency, accuracy, pipeline overhead, cold start and memory of a bundle, in one run.

    from wbc_edge.bench import BenchOptions, run_bench, write_report
    report = run_bench(BenchOptions(model=Path("model.wbc"), batches=(1, 8, 32)))
    write_report(report, "bench_out")

torch is imported only by the PyTorch eager baseline (`wbc_edge.bench.torch_eager`), when it runs.
"""
from wbc_edge.bench.report import format_markdown, write_report
from wbc_edge.bench.run import BenchOptions, ratios, run_bench

__all__ = ["BenchOptions", "format_markdown", "ratios", "run_bench", "write_report"]
