"""Using a model: any bestrq folder into a model (loading.py), the Python API of ``bestrq.load``
(api.py), and chunk-by-chunk inference (streaming.py). ``export/`` writes other formats from it."""
