"""Writing models into other formats: transformers folders (hf.py) and ONNX graphs (onnx.py), from what
``bestrq.inference`` loads."""

from .hf import export_blockers, export_hf, whole_frames

__all__ = ["export_blockers", "export_hf", "whole_frames"]
