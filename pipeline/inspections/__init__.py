"""Measurement inspections of non-tablet products (vials, blister packs, labels).

Each kind has three parts: a renderer in `pipeline.imaging` (simulated line, accuracy
benchmarks), a pure measurement function served by a Triton python-backend model, and a
judge that applies a recipe's tolerances to the measurement (here). See `base` for the
contract every kind follows.
"""
