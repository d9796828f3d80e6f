"""Flax Linen layers: spectral normalization with true operator norms, and fast convolutions.

The power-iteration state lives in the variable collection ``'spectral'``; see DESIGN.md.
"""
