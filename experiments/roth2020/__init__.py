"""Roth, Kilcher & Hofmann (NeurIPS 2020): adversarial training as data-dependent operator-norm
regularization."""
