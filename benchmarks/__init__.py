"""LineSight benchmarks: scripts that measure the pipeline (see docs/benchmarks.md).

A package so that shared pieces (`benchmarks.tables`, `benchmarks.heldout`) import as
`benchmarks.<module>` from the repository root; every script still runs as a plain file.
"""
