"""Yan, Guo & Zhang (AMM): adversarial margin maximization against vanilla and adversarial
training."""
