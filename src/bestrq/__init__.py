"""bestrq: self-supervised speech pre-training with BEST-RQ."""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """A run, checkpoint or exported folder -> a frozen model with ``extract_features`` (see bestrq.inference.api)."""
    from .inference.api import load as _load

    return _load(path, device)
