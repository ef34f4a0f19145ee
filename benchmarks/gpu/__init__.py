"""The GPU test + benchmark suite (``python3 -m benchmarks.gpu.suite``) and the tools that compile
ahead of time what it would otherwise compile on the GPU machine."""
