"""``OUT/sessions.json``: each invocation of the study, with its seconds, commit, settings and stages;
the study's time is the sum over its sessions. And what a session runs on: the commit and the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..files import atomic_path

SESSIONS = "sessions.json"  # in the study's folder: each session
MACHINE = "machine.txt"  # in the timing stage's folder: the machine it ran on


@dataclass
class Session:
    """This invocation's record in ``OUT/sessions.json``: the study's time is the sum over its sessions."""

    path: Path
    command: str
    config: dict = field(default_factory=dict)  # the study's settings in this invocation
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.sessions = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": 0.0,
                              "commit": commit(), "command": self.command, "config": self.config, "stages": []})

    def check_margins(self) -> None:
        """The equivalence margins are fixed before the run: a session that changes them is refused."""
        margins = [s["config"]["probe"]["margins"] for s in self.sessions if s.get("config")]
        if any(m != margins[-1] for m in margins[:-1]):
            raise ConfigError(f"{self.path.parent}: probe.margins were {margins[0]} when this study began; a "
                              f"verdict's margin is fixed before the run, not changed to {margins[-1]} (start "
                              "another study folder to use other margins)")

    def save(self, stage: str | None = None) -> None:
        now = self.sessions[-1]
        now["seconds"] = round(time.monotonic() - self.started, 1)
        if stage:  # what was finished, and when (seconds into this session)
            now["stages"].append({"stage": stage, "at": now["seconds"]})
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.sessions, indent=1))

    @property
    def seconds(self) -> float:
        return sum(s["seconds"] for s in self.sessions)


def commit() -> str:
    """The source tree's git commit (with ``+changes`` if it has uncommitted ones), or ``unknown``."""
    src = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores{gpu}; torch {torch.__version__}, {platform.system()}"
