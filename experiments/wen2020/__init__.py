"""Wen, Li & Jia (ICML 2020): what adversarial training does to layer spectra, margins and
confidence."""
