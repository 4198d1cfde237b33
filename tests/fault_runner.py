"""``bestrq`` with faults injected, for test_reliability.py (run as a script, also under torchrun).

    FAULT_KILL_IN_SAVE=N     SIGKILL this process halfway through writing the N-th checkpoint
    FAULT_RANK=R FAULT_STEP=K FAULT_MODE=raise|kill
                             rank R raises (or SIGKILLs itself) in its K-th training forward pass;
                             K1,K2,... under torchrun: the K of each restart in turn
                             (TORCHELASTIC_RESTART_COUNT), none after the last
"""

import os
import signal
import sys

import torch

from bestrq import cli
from bestrq.runtime import checkpoint
from bestrq.train import loop


def kill_in_save(n: int) -> None:
    real, calls = checkpoint.save_file, [0]

    def save_file(tensors, filename, metadata=None):
        calls[0] += 1
        real(tensors, filename, metadata=metadata)
        if calls[0] == n:  # cut the file short, as a kill mid-write would, then die
            with open(filename, "r+b") as fh:
                fh.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_file = save_file


def fail_at(rank: int, step: int, mode: str) -> None:
    build, calls = loop.build_model, [0]

    def build_model(cfg):
        model = build(cfg)
        forward = model.forward

        def faulty(*args, **kwargs):
            if model.training and int(os.environ.get("RANK", "0")) == rank:
                calls[0] += 1
                if calls[0] == step:
                    if mode == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError(f"injected fault on rank {rank}")
            return forward(*args, **kwargs)

        model.forward = faulty
        return model

    loop.build_model = build_model


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "FAULT_KILL_IN_SAVE" in os.environ:
        kill_in_save(int(os.environ["FAULT_KILL_IN_SAVE"]))
    if "FAULT_RANK" in os.environ:
        steps = [int(k) for k in os.environ["FAULT_STEP"].split(",")]
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restart < len(steps):
            fail_at(int(os.environ["FAULT_RANK"]), steps[restart], os.environ.get("FAULT_MODE", "raise"))
    sys.exit(cli.main(sys.argv[1:]))
