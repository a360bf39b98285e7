"""Progress display: a tqdm bar on a terminal, plain periodic lines in logs and pipes."""
import sys
import time

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def format_fields(fields: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in fields.items())


class Progress:
    """Counts steps of a known total and shows the latest fields (loss, lr, img/s ...).

    mode: 'bar' (tqdm), 'lines' (a line about every tenth of the total and at least every
    ``line_seconds``), 'off', or 'auto' (bar if ``stream`` is a terminal, else lines).
    """

    def __init__(self, total: int, desc: str, mode: str = "auto", stream=None,
                 line_seconds: float = 60.0):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.total, self.desc = mode, total, desc
        self.count, self.start = 0, time.time()
        self.line_every = max(1, total // 10)
        self.line_seconds, self.last_line = line_seconds, self.start
        self.bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True,
                        leave=True) if mode == "bar" else None

    def update(self, n: int = 1, **fields) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.set_postfix_str(format_fields(fields), refresh=False)
            self.bar.update(n)
        elif self.mode == "lines":
            now = time.time()
            if (self.count % self.line_every == 0 or self.count == self.total
                    or now - self.last_line >= self.line_seconds):
                elapsed = now - self.start
                eta = elapsed / self.count * (self.total - self.count)
                print(f"{self.desc} {self.count}/{self.total} {format_fields(fields)} "
                      f"elapsed {format_duration(elapsed)} ETA {format_duration(eta)}",
                      file=self.stream, flush=True)
                self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
