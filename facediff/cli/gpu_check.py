"""make gpu-check: what a CUDA GPU must run, in one script, within about 8 minutes.

    python -m facediff.cli.gpu_check [--wheels DIR] [--out FILE] [--dry-run]

Run from a checkout on a machine that has torch and perhaps nothing else of ours, and no
network. The steps, each with its own time limit, each recorded whether it passes or not:

1. dependencies: the modules facediff needs that are missing are installed from the wheels in
   `--wheels` (`--download-wheels DIR` fills that folder on a machine with PyPI: the versions
   installed there, built as wheels) into a folder of their own, first on PYTHONPATH;
2. the tests that need CUDA (tests/test_device.py: precision and device auto, a training
   step, sampling, a checkpoint round trip, compiled against eager);
3. the demo's training for a fixed number of steps on the GPU at precision=auto;
4. the paper-scale benchmark (facediff-bench bench.what=[paper], bf16 eager and compiled).

It writes one JSON (the GPU's name, torch, CUDA, every step's outcome, seconds and figures).
`--dry-run` runs the same steps on the CPU at tiny sizes: the tests run it there.

This file imports only the standard library at the top: it must start where nothing of ours is
installed yet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# module -> distribution: what facediff imports on the training, sampling and bench paths
NEEDED = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "diffusers": "diffusers",
    "lightning": "lightning",
    "torchmetrics": "torchmetrics",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "peft": "peft",
    "scipy": "scipy",
    "psutil": "psutil",
    "filelock": "filelock",
    "tqdm": "tqdm",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "pytest": "pytest",
}
# pure-Python ones a GPU image commonly lacks (the lent machines' image has the rest)
WHEELS = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "diffusers"]

DRY_RUN_BENCH = [
    "bench.paper_steps=1",
    "bench.paper_warmup=0",
    "bench.paper_sample_steps=[2]",
    "bench.paper_sample_batch=2",
    "bench.paper_matmul_sizes_cpu=[256]",
    "bench.paper_precisions=[fp32]",
    # the demo's row only, at batch 2, eager: the script's path, not the figures
    "bench.paper_models=[{name:demo,overrides:['experiment=demo'],latent:null,"
    "batch_cuda:2,batch_cpu:2}]",
]
GPU_BENCH = ["bench.paper_precisions=[bf16]", "bench.paper_compile=auto"]


def missing_modules(python: str = sys.executable, env: dict | None = None) -> list[str]:
    """The NEEDED modules that `python` cannot import (checked in a child process)."""
    code = (
        "import importlib.util as u, json, sys; "
        f"print(json.dumps([m for m in {list(NEEDED)!r} if u.find_spec(m) is None]))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def install_wheels(wheels: Path, target: Path) -> list[str]:
    """pip install every wheel in `wheels` into `target`, without the network or dependencies;
    the installed files' names."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise SystemExit(
            f"gpu_check: --wheels {wheels}: no .whl files there (make gpu-wheels builds them)"
        )
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target)]
    subprocess.run(cmd + [str(f) for f in files], check=True)
    return [f.name for f in files]


def download_wheels(folder: Path, names=WHEELS) -> list[str]:
    """Build wheels of `names` at the versions installed here (pure Python: they install on
    any Python 3 of the GPU machine) into `folder`, for `--wheels`."""
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{n}=={version(n)}" for n in names]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), *pins],
        check=True,
    )
    return pins


def run_step(name: str, cmd: list[str], env: dict, timeout: float, log_dir: Path) -> dict:
    """Run one step in a child process; its outcome, seconds and the tail of its log."""
    t0 = time.perf_counter()
    log = log_dir / f"{name}.log"
    try:
        with log.open("w") as f:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    result = {"ok": rc == 0, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1)}
    if rc != 0:
        result["log_tail"] = log.read_text()[-3000:]
    print(f"gpu_check: {name}: {'ok' if rc == 0 else 'FAILED'} ({result['seconds']} s)")
    return result


def device_facts(env: dict) -> dict:
    code = (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({"
        "'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': c, "
        "'gpu': torch.cuda.get_device_name(0) if c else None, "
        "'bf16': torch.cuda.is_bf16_supported() if c else None}))"
    )
    code += "; import hydra; print(hydra.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    facts, hydra_file = out.stdout.splitlines()[-2:]
    return json.loads(facts) | {"hydra_from": str(Path(hydra_file).parents[1])}


def check(args) -> dict:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    result: dict = {"dry_run": args.dry_run, "steps": {}}
    t_start = time.perf_counter()

    missing = missing_modules(env=env)
    if args.wheels and (missing or args.force_install):
        site = work / "site"
        result["installed_wheels"] = install_wheels(Path(args.wheels), site)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(site), str(ROOT), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        missing = missing_modules(env=env)
    else:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result["missing_modules"] = missing
    if missing:
        wanted = sorted({NEEDED[m] for m in missing})
        raise SystemExit(
            f"gpu_check: missing modules {missing}; carry their wheels ({', '.join(wanted)}) "
            "and pass --wheels DIR (make gpu-wheels builds the usual ones into .whl/)"
        )
    result.update(device_facts(env))
    if not args.dry_run and not result["cuda_available"]:
        raise SystemExit("gpu_check: torch sees no CUDA device; --dry-run runs the steps on CPU")

    py = sys.executable
    device = "cpu" if args.dry_run else "cuda"
    accelerator = "cpu" if args.dry_run else "gpu"
    tests_env = dict(env, FACEDIFF_TEST_DEVICE=device)
    result["steps"]["tests"] = run_step(
        "tests",
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py"],
        tests_env,
        args.step_timeout,
        work,
    )
    steps = 4 if args.dry_run else args.demo_steps
    demo_dir = work / "demo"
    demo = [
        py, "-m", "facediff.cli.train", "experiment=demo", f"trainer.max_steps={steps}",
        f"trainer.accelerator={accelerator}", "trainer.precision=auto", "logger=csv",
        "evaluate_after=false", "callbacks.fidelity.every_n_steps=0",
        f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1",
        "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
        f"paths.data_dir={work / 'data'}", f"hydra.run.dir={demo_dir}",
    ]  # fmt: skip
    if args.dry_run:
        demo += ["data.source.num_faces=200", "callbacks.sample_grid.num_steps=2"]
    t0 = time.perf_counter()
    result["steps"]["demo"] = run_step("demo", demo, env, args.step_timeout, work)
    result["steps"]["demo"]["max_steps"] = steps
    result["steps"]["demo"]["wall_s_with_data"] = round(time.perf_counter() - t0, 1)

    bench_dir = work / "bench"
    bench = [py, "-m", "facediff.cli.bench", "bench.what=[paper]", f"hydra.run.dir={bench_dir}"]
    bench += [f"bench.out_dir={bench_dir}", f"paths.data_dir={work / 'data'}"]
    bench += DRY_RUN_BENCH if args.dry_run else GPU_BENCH
    if args.dry_run:
        bench += ["bench.paper_base=['data.source.num_faces=200']", "bench.device=cpu"]
    result["steps"]["bench"] = run_step("bench", bench, env, args.bench_timeout, work)
    paper = bench_dir / "bench.json"
    if paper.is_file():
        result["bench"] = json.loads(paper.read_text()).get("paper")
        result["bench_table"] = (bench_dir / "paper.md").read_text()
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    result["ok"] = all(s["ok"] for s in result["steps"].values())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"gpu_check: {'passed' if result['ok'] else 'FAILED'}; figures in {out}")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--wheels", help="folder of wheels to install what is missing from")
    p.add_argument("--out", default="outputs/gpu_check/gpu_check.json", help="the JSON written")
    p.add_argument("--work", default="outputs/gpu_check", help="logs, data and runs go here")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, tiny")
    p.add_argument("--demo-steps", type=int, default=300, help="demo training steps on the GPU")
    p.add_argument("--step-timeout", type=float, default=150, help="seconds per step")
    p.add_argument("--bench-timeout", type=float, default=270, help="seconds for the bench")
    p.add_argument("--force-install", action="store_true", help="install --wheels even if "
                   "nothing is missing (the tests check the install this way)")  # fmt: skip
    p.add_argument("--download-wheels", metavar="DIR", help="build the wheels into DIR and stop")
    args = p.parse_args(argv)
    if args.download_wheels:
        print("gpu_check: built", ", ".join(download_wheels(Path(args.download_wheels))))
        return
    sys.exit(0 if check(args)["ok"] else 1)


if __name__ == "__main__":
    main()
