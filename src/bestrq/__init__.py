"""bestrq: self-supervised speech pre-training with BEST-RQ."""

__version__ = "0.1.0"
