"""specforge: train, serve and measure speculative-decoding draft heads."""

__version__ = "0.1.0"
