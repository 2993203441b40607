"""Benchmark harness for multimodal sequential recommendation."""

__version__ = "0.1.0"
