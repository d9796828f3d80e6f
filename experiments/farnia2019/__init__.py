"""Farnia, Zhang & Tse (ICLR 2019): Table 1 configs and the runners that reproduce it."""
