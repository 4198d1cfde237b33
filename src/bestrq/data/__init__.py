"""Manifests, corpus importers, audio loading, duration-bucketed batching."""
