"""Each script's --help lists the flags it reads, grouped, with their defaults; the keys it does
not read stay accepted (a training YAML carries them all) and the reference's names work."""
import re
import subprocess
import sys

import pytest

from src.config_loader import HELP_GROUPS, build_parser, parse_config
from tests.conftest import ROOT


def shown_flags(text):
    return set(re.findall(r"^\s{2}(--\w+)", text, re.M))


def sections(text):
    return re.findall(r"^(\S[^\n]*):\n", text, re.M)


@pytest.mark.parametrize("script,present,absent,accepted", [
    ("train.py", {"--lr", "--epoch_size", "--distribute", "--dataset", "--min_score",
                  "--run_platform", "--eval_interval"},
     {"--checkpoint_path", "--quantize", "--backend"}, ["--quantize", "none"]),
    ("eval.py", {"--checkpoint_path", "--dataset", "--min_score", "--backend", "--quantize",
                 "--eval_batch_size"},
     {"--lr", "--epoch_size", "--distribute", "--precision", "--eval_interval"},
     ["--lr", "0.5"]),
    ("predict.py", {"--checkpoint_path", "--min_score", "--backend", "--quantize"},
     {"--lr", "--dataset", "--mindrecord_dir", "--distribute", "--coco_evaluator"},
     ["--epoch_size", "3"]),
    ("export.py", {"--num_classes", "--min_scale", "--run_platform", "--quantize",
                   "--calibration_images"},
     {"--lr", "--dataset", "--min_score", "--checkpoint_path", "--backend"},
     ["--min_score", "0.2"]),
])
def test_help_lists_what_the_script_reads_grouped(script, present, absent, accepted):
    text = build_parser("", script).format_help()
    flags = shown_flags(text)
    assert present <= flags, present - flags
    assert not absent & flags, absent & flags
    titles = [t for t in sections(text) if t in HELP_GROUPS]
    assert titles == [g for g in HELP_GROUPS if g in titles]      # in the fixed order
    assert "(default: " in text
    config = parse_config(accepted, script=script)   # not listed, still accepted
    assert str(getattr(config, accepted[0][2:])) == accepted[1]


def test_scripts_help_shows_their_own_flags_first_and_the_reference_names_work():
    result = subprocess.run([sys.executable, "predict.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    titles = sections(result.stdout)
    assert titles.index("predict.py's own flags") < titles.index("model")
    assert "--draw_threshold DRAW_THRESHOLD" in result.stdout and "(default: 0.5)" in \
        result.stdout
    assert "--lr" not in shown_flags(result.stdout)
    config = parse_config(["--data_url", "/d", "--train_url", "/o", "--mindrecord_url", "/m",
                           "--run_platform", "cpu"])
    assert (config.coco_root, config.output_dir, config.mindrecord_dir, config.run_platform) \
        == ("/d", "/o", "/m", "CPU")
