"""Stop requests: SIGINT/SIGTERM during training end the run cleanly after the current step."""
import signal
from typing import Optional

import numpy as np

from src.interrupts import Interrupted, raise_outside_mindspore, stop_at_once


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads at the next step boundary; a second
    Ctrl-C stops the run (``Interrupted``, raised once MindSpore's code returns: never inside a
    graph compilation, see ``src.interrupts``), a third at once. In a distributed run the ranks
    agree (an all-reduce of the flag after every step), so all of them stop after the same
    step."""

    def __init__(self, world: int = 1):
        self.requested: Optional[str] = None
        self.stopping = False
        self.previous: dict = {}
        self.any_rank = None
        if world > 1:
            from mindspore import ops

            self.any_rank = ops.AllReduce()   # a sum: CPU collectives only add

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            if self.stopping:
                stop_at_once(signum)
            self.stopping = True
            raise_outside_mindspore(Interrupted(signum), frame)
            return
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: saving a checkpoint after this step "
              "(Ctrl-C again to stop without it)", flush=True)

    def agreed(self) -> bool:
        """Whether this step is the last one (on every rank)."""
        if self.any_rank is None:
            return bool(self.requested)
        from mindspore import Tensor

        flag = Tensor(np.array([1.0 if self.requested else 0.0], np.float32))
        stop = float(self.any_rank(flag).asnumpy()[0]) > 0
        if stop and not self.requested:
            self.requested = "another rank's stop request"
        return stop

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
