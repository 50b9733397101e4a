"""Tablet classifier: preprocessing, network, training, export and offline metrics.

Importing this package imports nothing heavy: `pipeline.model.preprocess` must stay loadable
inside Triton's python backend (numpy + PIL only); torch is imported only by the training and
export modules.
"""
