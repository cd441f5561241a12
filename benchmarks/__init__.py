"""Benchmarks: side-by-side runs against plain trl / transformers (`python -m benchmarks`) and one-off scripts."""
