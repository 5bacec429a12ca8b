"""Distributed motion pretraining: two gloo processes under torchrun stay bit-identical, learn, and resume exactly."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from avatar3d.motion.corpus import CorpusConfig, build_corpus, load_split
from avatar3d.motion.distributed import DistContext
from avatar3d.motion.model import MotionModel, MotionModelConfig, MotionNet, fit_normalisation, read_blob
from avatar3d.motion.train import CropSampler, MotionTrainConfig, pretrain

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]

REPO = Path(__file__).resolve().parents[2]
CORPUS = CorpusConfig(n_train=6, n_test=0, generated_sentences=10, max_sentences=1, shard_utterances=6, seed=11)
MODEL = {"channels": 24, "mel_project": 8, "dilations": [1, 2, 1]}
TRAIN = {"batch": 8, "crop_frames": 24, "lr": 3e-3, "warmup_steps": 3, "checkpoint_every": 4}
STEPS, KILL_AT = 16, 10

# Runs under torchrun on every rank: (A) a straight run, (B) a run killed at step KILL_AT and restarted,
# (C) the real CLI without dropout (it leaves the process group, so it runs last).
HELPER = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    from avatar3d.cli import main
    from avatar3d.motion import distributed as dd
    from avatar3d.motion.model import MotionModelConfig
    from avatar3d.motion.train import MotionTrainConfig, pretrain

    corpus, out, steps, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    model_cfg, train_cfg = json.loads(sys.argv[5]), json.loads(sys.argv[6])
    torch.set_num_threads(1)
    ctx = dd.init_from_env()
    cfg = MotionModelConfig(**{**model_cfg, "dilations": tuple(model_cfg["dilations"])})
    tcfg = MotionTrainConfig(**train_cfg)
    losses = []
    a = pretrain(corpus, out / "A.pt", cfg, steps=steps, seed=0, train=tcfg, progress=False,
                 callback=lambda s, l: losses.append(l))

    class Killed(Exception):
        pass

    def kill(step, loss):
        if step == kill_at:
            raise Killed

    try:
        pretrain(corpus, out / "B.pt", cfg, steps=steps, seed=0, train=tcfg, progress=False, callback=kill)
        raise SystemExit("the kill callback did not fire")
    except Killed:
        pass
    resumed_from = torch.load(out / "B.pt", weights_only=True)["training"]["step"]
    dd.barrier(ctx)  # rank 0 read the checkpoint step before anyone overwrites it
    b = pretrain(corpus, out / "B.pt", cfg, steps=steps, seed=0, train=tcfg, progress=False)
    torch.save({"A": a.net.state_dict(), "B": b.net.state_dict(), "losses": losses, "rank": ctx.rank,
                "world": ctx.world_size, "backend": ctx.backend, "resumed_from": resumed_from},
               out / f"rank{ctx.rank}.pt")
    sys.exit(main(["motion", "pretrain", str(corpus), "-o", str(out / "C.pt"), "--config", sys.argv[7]]))
""")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp-corpus")
    build_corpus(out, CORPUS, progress=False)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_config(dropout: float | None = None) -> MotionModelConfig:
    extra = {} if dropout is None else {"dropout": dropout}
    return MotionModelConfig(**{**MODEL, "dilations": tuple(MODEL["dilations"]), **extra})


def test_two_gloo_processes_stay_identical_learn_and_resume_exactly(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    no_dropout = tmp_path / "no_dropout.yaml"
    no_dropout.write_text(yaml.safe_dump({"model": {**MODEL, "dropout": 0.0}, "train": TRAIN, "steps": STEPS}))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(script), str(tiny_corpus), str(out), str(STEPS), str(KILL_AT), json.dumps(MODEL), json.dumps(TRAIN),
           str(no_dropout)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"], r0["backend"]) == (0, 1, 2, "gloo")

    # both replicas are bit-identical after training, and training moved them
    torch.manual_seed(0)
    initial = MotionNet(_model_config(), 80, 16).state_dict()
    for name, p in r0["A"].items():
        assert torch.equal(p, r1["A"][name]), name
    moved = [name for name, p in r0["A"].items() if not torch.equal(p, initial[name])]
    assert len(moved) == len(initial), set(initial) - set(moved)

    # the 2-process (global) loss went down: last quarter clearly below the first quarter
    losses = np.array(r0["losses"])
    assert len(losses) == STEPS and losses == pytest.approx(r1["losses"])
    assert losses[-4:].mean() < 0.85 * losses[:4].mean(), losses

    # rank 0 alone wrote the model, atomically: no temp files; weights are rank 0's; the run is recorded
    assert sorted(p.name for p in out.iterdir()) == ["A.pt", "B.pt", "C.pt", "rank0.pt", "rank1.pt"]
    blob = read_blob(out / "A.pt")
    for name, p in r0["A"].items():
        assert torch.equal(blob["weights"][name], p), name
    assert blob["training"]["step"] == STEPS and blob["info"]["world_size"] == 2
    assert len(set(blob["info"]["rank_parameter_sha256"])) == 1

    # killed at step 10, restarted from the step-8 checkpoint: bit-identical to the straight run, on both ranks
    assert r0["resumed_from"] == 8
    for r in (r0, r1):
        for name, p in r0["A"].items():
            assert torch.equal(r["B"][name], p), name

    # without dropout, 2 processes x 4 crops equal 1 process x 8 crops (the same global batch) up to rounding
    single = pretrain(tiny_corpus, tmp_path / "single.pt", _model_config(0.0), steps=STEPS, seed=0,
                      train=MotionTrainConfig(**TRAIN), progress=False)
    ddp_weights = read_blob(out / "C.pt")["weights"]
    for name, p in single.net.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], p, atol=2e-4, rtol=1e-3, msg=name)
    assert "2 process(es)" in run.stdout


def test_each_rank_builds_its_own_share_of_the_global_batch(tiny_corpus: Path) -> None:
    utterances = load_split(tiny_corpus, "train")
    torch.manual_seed(0)
    model = MotionModel(_model_config(), fit_normalisation(utterances))
    cfg = MotionTrainConfig(**TRAIN)

    def batches(rank: int, world: int) -> list[tuple[torch.Tensor, ...]]:
        sampler = CropSampler(model, utterances, cfg, torch.Generator().manual_seed(3), rank, world)
        return [sampler.batch() for _ in range(3)]

    whole, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    for w, a, b in zip(whole, first, second):
        for full, x, y in zip(w, a, b):
            assert x.shape[0] == y.shape[0] == cfg.batch // 2
            torch.testing.assert_close(x, full[0::2], rtol=0, atol=0)
            torch.testing.assert_close(y, full[1::2], rtol=0, atol=0)
        assert not torch.equal(a[2], b[2])  # the two ranks train on different crops
    assert DistContext().is_main and not DistContext().is_distributed
