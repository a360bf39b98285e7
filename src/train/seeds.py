"""seeds.py: one configuration trained and evaluated once per seed, in processes of their own
(train.py, then eval.py on its last checkpoint); each run's mAP and AP50, their mean and
standard deviation."""
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
from typing import Sequence

from src.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SeedRunError(RuntimeError):
    """A seed's train.py or eval.py failed (its own output says why)."""


def _run(args: list, what: str) -> None:
    """Run one script; a stop signal waits for it to stop (Ctrl-C reaches it too, being in
    the same process group; any other signal is passed on), so that it finishes what it
    writes (train.py saves a checkpoint)."""
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT)
    try:
        status = process.wait()
    except KeyboardInterrupt as stop:
        number = getattr(stop, "number", signal.SIGINT)
        if number != signal.SIGINT:
            process.send_signal(number)
        process.wait()
        raise
    if status:
        raise SeedRunError(f"{what} exited with status {status} (its output is above)")


def last_checkpoint(folder: str) -> str:
    """The newest ssd-*.ckpt of a training run's folder."""
    found = sorted(glob.glob(os.path.join(folder, "ssd-*.ckpt")), key=os.path.getmtime)
    if not found:
        raise SeedRunError(f"{folder}: train.py wrote no ssd-*.ckpt")
    return found[-1]


def spread(values: Sequence[float]) -> tuple:
    """(mean, sample standard deviation; 0 for one value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_seeds(seeds: Sequence[int], output_dir: str, flags: Sequence[str]) -> dict:
    """Train and evaluate with each seed into ``output_dir``/seed-<n>/{train,eval}; print one
    JSON line per run and the summary, and write them to ``output_dir``/seeds.json."""
    runs = []
    for seed in seeds:
        folder = os.path.join(os.path.abspath(output_dir), f"seed-{seed}")
        train_dir, eval_dir = os.path.join(folder, "train"), os.path.join(folder, "eval")
        _run(["train.py", *flags, "--seed", str(seed), "--output_dir", train_dir],
             f"seed {seed}: train.py")
        _run(["eval.py", *flags, "--seed", str(seed), "--checkpoint_path",
              last_checkpoint(train_dir), "--output_dir", eval_dir], f"seed {seed}: eval.py")
        with open(os.path.join(eval_dir, "eval_results.json")) as f:
            results = json.load(f)
        runs.append({"seed": seed, "mAP": results["mAP"], "AP50": results["AP50"],
                     "folder": folder})
        print(json.dumps({"run": runs[-1]}), flush=True)
    summary = {"seeds": list(seeds), "flags": list(flags)}
    for key in ("mAP", "AP50"):
        mean, std = spread([r[key] for r in runs])
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
    print(json.dumps({"summary": summary}), flush=True)
    write_json({**summary, "runs": runs}, os.path.join(output_dir, "seeds.json"), indent=1)
    return {**summary, "runs": runs}
