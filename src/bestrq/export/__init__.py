"""Getting models out: the Python API (``bestrq.load``), the transformers export (hf.py) and ONNX (onnx.py)."""

from .api import Model, S3prlUpstream, load, load_checkpoint
from .hf import export_blockers, export_hf, whole_frames

__all__ = ["Model", "S3prlUpstream", "export_blockers", "export_hf", "load", "load_checkpoint", "whole_frames"]
