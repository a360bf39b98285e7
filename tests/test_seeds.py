"""seeds.py: one configuration, several seeds, each run's mAP and AP50 and their spread."""
import json
import statistics

import pytest

from src.train.seeds import spread
from tests.conftest import run_script


def test_two_seeds_of_a_tiny_run_report_each_run_and_their_spread(demo_root, tmp_path):
    out = tmp_path / "seeds"
    result = run_script(["seeds.py", "--seeds", "3,4", "--output_dir", str(out),
                         "--config", "configs/demo.yaml", "--data_url", demo_root,
                         "--epoch_size", "1", "--batch_size", "4", "--run_platform", "CPU",
                         "--progress", "off"], timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith('{"')]
    runs = [line["run"] for line in lines if "run" in line]
    summary = next(line["summary"] for line in lines if "summary" in line)
    assert [r["seed"] for r in runs] == [3, 4]
    for run in runs:
        scored = json.load(open(out / f"seed-{run['seed']}" / "eval" / "eval_results.json"))
        assert (run["mAP"], run["AP50"]) == (scored["mAP"], scored["AP50"])
        assert (out / f"seed-{run['seed']}" / "train" / "config.yaml").exists()
    assert summary["mAP_mean"] == pytest.approx(statistics.fmean(r["mAP"] for r in runs))
    assert summary["AP50_std"] == pytest.approx(statistics.stdev(r["AP50"] for r in runs))
    assert json.load(open(out / "seeds.json"))["runs"] == runs
    # The seeds reach the runs: their configs differ in the seed only.
    configs = [(out / f"seed-{s}" / "train" / "config.yaml").read_text() for s in (3, 4)]
    assert "seed: 3" in configs[0] and "seed: 4" in configs[1]


def test_spread_and_bad_seed_lists():
    assert spread([0.2, 0.4]) == (pytest.approx(0.3), pytest.approx(0.1414213562))
    assert spread([0.5]) == (0.5, 0.0)
    for bad in ("1,1", "a", "-1"):
        result = run_script(["seeds.py", "--seeds", bad], timeout=60)
        assert result.returncode == 2 and "--seeds" in result.stderr
    result = run_script(["seeds.py", "--seeds", "1", "--seed", "2"], timeout=60)
    assert result.returncode == 2 and "set per run by seeds.py" in result.stderr
