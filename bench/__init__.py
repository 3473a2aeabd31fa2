"""gossiplearn benchmarks: ``make bench`` (``python -m bench``) rewrites docs/benchmarks.md."""
