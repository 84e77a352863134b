"""Benchmark gpunet against PyTorch on the same device, in the same process, on the same arrays.

    from gpunet.bench import run_bench, format_table, write_outputs
    results = run_bench("cpu", quick=True)    # the content of results.json
    print(format_table(results)); write_outputs(results, "bench-out")

Modules: workloads (the rows and what each side runs), runner (checking, timing, memory, sgemm),
timing (medians over alternating blocks), torch_twin (a gpunet model as torch.nn with the same weights),
machine (facts recorded with the numbers), report (table, JSON, Markdown, chart).
PyTorch is optional (`pip install gpunet[bench]`); without it the gpunet rows run alone.
How to run it and what every row means: benchmarks/README.md.
"""
from gpunet.bench.report import format_markdown, format_table, write_outputs
from gpunet.bench.runner import run_bench

__all__ = ["run_bench", "format_table", "format_markdown", "write_outputs"]
