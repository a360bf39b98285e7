"""train_log.jsonl: one JSON object per step ('kind': 'step'), epoch ('epoch') and evaluation
('eval'), appended as training goes; and its reader, which survives a crash's torn last line."""
import json
import os
import warnings
from typing import Optional

from src.files import WriteError, describe_write_error, write_atomic

LOG_NAME = "train_log.jsonl"


def read_log(path: str) -> list:
    """The rows of a JSON-lines log ([] when there is none). A last line that is not valid
    JSON (a crash while writing it) is left out with a warning naming the file and line; a bad
    line before the last is an error naming them."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{path}, line {number}: not a JSON object ({exc.msg}); the "
                                 "log is damaged: move it aside to start its rows afresh") \
                    from None
            warnings.warn(f"{path}, line {number}: a torn last line (the run was interrupted "
                          "while writing it) is left out", stacklevel=2)
    return rows


class RunLog:
    """The training log of one run folder. A resumed run keeps the rows up to its checkpoint's
    step (``keep_until_step``) and appends after them; a fresh run starts it empty. A disabled
    log (the other ranks of a distributed run) writes nothing."""

    def __init__(self, path: str, keep_until_step: Optional[int] = None, enabled: bool = True):
        self.path = path
        self.file = None
        if not enabled:
            return
        rows = []
        if keep_until_step is not None:
            rows = [r for r in read_log(path) if r.get("global_step", 0) <= keep_until_step]
        write_atomic(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows))
        self.file = open(path, "a", encoding="utf-8")

    def rows(self) -> list:
        return read_log(self.path)

    def write(self, kind: str, **fields) -> None:
        """Append one row (a full disk: a WriteError naming the log; a torn last line is left
        out when the run resumes)."""
        if self.file:
            try:
                self.file.write(json.dumps({"kind": kind, **fields}) + "\n")
                self.file.flush()
            except OSError as exc:
                raise WriteError(describe_write_error(
                    self.path, exc, kept="its rows so far are kept (a torn last line is left out "
                    "by --resume auto)"), exc) from exc

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
