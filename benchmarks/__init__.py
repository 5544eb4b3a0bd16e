"""Benchmarks of vdmlab: plain scripts (``python benchmarks/<name>.py``) that print a markdown table and write JSON."""
