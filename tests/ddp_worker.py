"""Run by test_train.py under torchrun: train 3 steps, write this rank's weight digests."""

import hashlib
import json
import os
import sys
from pathlib import Path

from helpers import small

from bestrq.train.loop import pretrain


def digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write(path: Path, result) -> None:
    state = result.model.state_dict()
    path.write_text(json.dumps({
        "step": result.step,
        "weights": digest({k: v for k, v in state.items() if not k.startswith("quantizer.")}),
        "quantizer": digest({k: v for k, v in state.items() if k.startswith("quantizer.")}),
    }))


if __name__ == "__main__":
    corpus, out, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]  # extra: --set items
    result = pretrain(small(corpus, out / "run", "train.steps=3", "data.max_batch_duration=10", *extra))
    write(out / f"rank{os.environ['RANK']}.json", result)
