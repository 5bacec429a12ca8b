"""SIGTERM during `avatar3d train` (what `timeout`, schedulers and container stops send): nothing is lost.

The run stops between two steps, checkpoints that step, exits 143 and prints the exact command that
continues it; that command finishes the run from the same step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from avatar3d.cli import main
from avatar3d.config import load_config
from avatar3d.train.checkpoint import CHECKPOINT_NAME, load_state
from avatar3d.train.config import TrainConfig, config_to_yaml

REPO = Path(__file__).resolve().parents[2]
STEPS = 80  # tiny steps take ~0.15 s on 2 free cores: the kill lands early even under load (the pytest process reading the bar lags), the resume is short


def test_sigterm_mid_training_checkpoints_and_resumes(avatar_subject: Path, tmp_path: Path, capsys) -> None:
    # no periodic checkpoint: whatever checkpoint exists after the kill was written because of it
    cfg = dataclasses.replace(load_config(TrainConfig, REPO / "configs" / "tiny.yaml"), steps=STEPS,
                              checkpoint_every=10_000)  # fmt: skip
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(config_to_yaml(cfg))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "avatar3d", "train", str(avatar_subject), "-o", str(run), "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    seen = 0
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None and seen < 3:  # the tqdm bar: "train: ... 3/150"
            counts = re.findall(rf"(\d+)/{STEPS}", "".join(chunks))
            seen = int(counts[-1]) if counts else 0
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    err = "".join(chunks)
    assert code == 143, err
    assert "Traceback" not in err, err
    last = [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]
    hint = f"avatar3d train {shlex.quote(str(avatar_subject))} -o {shlex.quote(str(run))} --resume"
    assert last.startswith("interrupted at step ") and f"`{hint}`" in last, last
    stopped = int(re.match(r"interrupted at step (\d+)", last).group(1))
    assert seen <= stopped < STEPS
    assert load_state(run / CHECKPOINT_NAME)["step"] == stopped
    assert not list(run.glob(".*.tmp-*")), "temp files left behind"

    assert main(shlex.split(hint)[1:]) == 0  # the printed command, as typed
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert f"resumed at step {stopped}" in out.out
    assert result["finished"] and result["step"] == STEPS and (run / "avatar.pt").is_file()
