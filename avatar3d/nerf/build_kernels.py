"""Prebuild every registered kernel, two at a time: ``python -m avatar3d.nerf.build_kernels``.

Why: a first ``avatar3d train`` or demo would otherwise stall for one to two minutes compiling
the kernels one after the other; ``tools/install.sh`` runs this at install so they are ready,
and each build runs in its own interpreter so two compile at once. The list is
:data:`avatar3d.nerf.backend.KERNEL_SPECS`: a new kernel registers there, not here.
A failed build is reported, not fatal (the op then runs its pure-torch mirror with a warning)
unless ``--strict``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from avatar3d.nerf.backend import KERNEL_SPECS, kernel_specs, load_extension
from avatar3d.resources import import_root


def build_one(ref: str, kind: str) -> dict[str, Any]:
    """Load (prebuilt) or JIT-build one registered kernel in this process."""
    (spec,) = kernel_specs([ref])
    record = load_extension(spec, kind)  # type: ignore[arg-type]
    return {"kernel": spec.name, "kind": kind, "source": record.source, "seconds": round(record.seconds, 1),
            "error": record.error, "build_dir": str(spec.build_root)}  # fmt: skip


def _build_in_child(ref: str, kind: str) -> dict[str, Any]:
    env = dict(os.environ)  # the child imports this same copy of avatar3d (checkout or site-packages)
    env["PYTHONPATH"] = os.pathsep.join([str(import_root())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-m", "avatar3d.nerf.build_kernels", "--one", ref, "--kind", kind],
                          capture_output=True, text=True, env=env)  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = " | ".join((proc.stderr.strip().splitlines() or ["no output"])[-3:])
        return {"kernel": ref, "kind": kind, "source": "failed", "seconds": 0.0, "error": detail, "build_dir": ""}
    return json.loads(lines[-1])


def build_kernels(kind: str = "cpu", jobs: int = 2, refs: Iterable[str] = KERNEL_SPECS) -> list[dict[str, Any]]:
    """Build every kernel in ``refs`` for ``kind``, ``jobs`` at once, each in its own interpreter."""
    refs = list(refs)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda ref: _build_in_child(ref, kind), refs))


def describe(result: dict[str, Any]) -> str:
    """One line per kernel, as install.sh prints it."""
    took = f" in {result['seconds']:.0f} s" if result["seconds"] else ""
    error = f" ({result['error']})" if result["error"] else ""
    return f"kernels: {result['kernel']} {result['kind']} {result['source']}{took}{error}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar3d.nerf.build_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("cpu", "cuda"), default="cpu", help="which build (default cpu)")
    parser.add_argument("--jobs", type=int, default=2, help="builds at once (default 2)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a build fails")
    parser.add_argument("--one", metavar="MODULE:SPEC", help=argparse.SUPPRESS)  # one build, JSON on stdout
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(build_one(args.one, args.kind)))
        return 0
    results = build_kernels(args.kind, args.jobs)
    for result in results:
        print(describe(result), flush=True)
    return 1 if args.strict and any(r["source"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
