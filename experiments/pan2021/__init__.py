"""Pan & Mishra: fast approximate spectral normalization through the Fourier transform."""
