"""What a training run leaves in its output folder, and starting another run in that folder.

A folder holds a run when it has a step log or a checkpoint. A new run (no ``--resume``) there
would truncate the log, overwrite same-named checkpoints and prune across both runs, so it is
refused with the choices spelled out; ``--overwrite true`` first moves the earlier run's files
into ``previous-<time>/`` inside the folder (the MindRecord sets stay: they are data).
"""
import glob
import os
import shutil
import time

from src.engine.checkpoint import CHECKPOINT_PREFIX
from src.engine.run_log import LOG_NAME

CURVE_NAME = "loss_curve.png"
BEST_NAME = "best.ckpt"
EVAL_FOLDER = "eval"   # evaluation during training writes eval.py's files here
CONFIG_NAME = "config.yaml"
PREVIOUS_PREFIX = "previous-"


class RunFolderError(RuntimeError):
    """An output folder that cannot take this run; the message says what to do."""


def run_files(folder: str) -> list:
    """Names in ``folder`` that an earlier training run wrote ([] when it holds none)."""
    if not os.path.isdir(folder):
        return []
    checkpoints = [os.path.basename(p) for p in
                   glob.glob(os.path.join(folder, f"{CHECKPOINT_PREFIX}-*.ckpt"))]
    if not checkpoints and not os.path.exists(os.path.join(folder, BEST_NAME)) and \
            not os.path.exists(os.path.join(folder, LOG_NAME)):
        return []
    names = [LOG_NAME, CURVE_NAME, BEST_NAME, EVAL_FOLDER, CONFIG_NAME, *checkpoints]
    return sorted(name for name in set(names) if os.path.exists(os.path.join(folder, name)))


def claim_run_folder(folder: str, resume: str, overwrite: bool, move: bool = True) -> str:
    """Make ``folder`` ready for a run: unchanged when it holds none or the run resumes; with
    ``overwrite`` the earlier run's files move into ``previous-<time>/`` (returned, else ''; only
    where ``move``: the main process of a distributed run); otherwise RunFolderError with the
    three choices."""
    found = run_files(folder)
    if not found or resume or (overwrite and not move):
        return ""
    if not overwrite:
        raise RunFolderError(
            f"{folder} holds an earlier training run ({', '.join(found[:4])}"
            f"{' ...' if len(found) > 4 else ''}). Continue it with --resume auto, train into "
            "another --output_dir, or pass --overwrite true to move its files into "
            f"{folder}/{PREVIOUS_PREFIX}<time>/ and start afresh")
    aside = os.path.join(folder, PREVIOUS_PREFIX + time.strftime("%Y%m%d-%H%M%S"))
    suffix = 1
    while os.path.exists(aside):
        aside = f"{aside.rsplit('.', 1)[0]}.{suffix}"
        suffix += 1
    os.makedirs(aside)
    for name in found:
        shutil.move(os.path.join(folder, name), os.path.join(aside, name))
    return aside
