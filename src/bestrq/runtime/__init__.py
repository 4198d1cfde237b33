"""What a run is made of on disk and across processes: the checkpoint folder (checkpoint.py), the
metrics log (metrics.py), and process groups and device checks (distributed.py). Below both
training and loading, which read and write them."""
