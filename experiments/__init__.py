"""The papers' experiments, each runnable as ``python -m experiments.PAPER.NAME``."""
