"""Converters from published weight files into the parameter trees of fsq_repro.models.

One module per network; each reads the publisher's format and returns (or writes, in
fsq_repro.models.weights' format) our tree. scripts/convert_weights.py is their CLI.
"""
