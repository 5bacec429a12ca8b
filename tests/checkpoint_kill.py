"""Kill a training process with SIGKILL while it is writing a checkpoint (shared by both backends' tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from avatar3d.train.checkpoint import CHECKPOINT_NAME

REPO = Path(__file__).resolve().parents[1]


def sigkill_while_checkpointing(subject: Path, run: Path, config_yaml: str, timeout_s: float = 240.0) -> bool:
    """Runs `avatar3d train SUBJECT -o RUN` with ``config_yaml`` in a child process and kills it the moment a
    later checkpoint's temp file appears beside an earlier checkpoint; True when it was caught mid-write."""
    config = run.parent / f"{run.name}.yaml"
    config.write_text(config_yaml)
    cmd = [sys.executable, "-m", "avatar3d.cli", "train", str(subject), "-o", str(run), "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and proc.poll() is None:
            temps = list(run.glob(".checkpoint.tmp-*")) if run.is_dir() else []
            if temps and (run / CHECKPOINT_NAME).is_file():
                proc.send_signal(signal.SIGKILL)
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
