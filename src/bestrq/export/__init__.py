"""Getting models out: the Python API (``bestrq.load``) and, later, the transformers and ONNX exports."""

from .api import Model, S3prlUpstream, load, load_checkpoint

__all__ = ["Model", "S3prlUpstream", "load", "load_checkpoint"]
