"""Every "auto" of a training run settled once: the network's layers, its precision, how steps
are fed and read back, the augmentation workers. Built once (``create_run_plan``) before the
network, handed to the parts that follow it, and printed once (``RunPlan.describe``)."""
from dataclasses import dataclass

from src.config import Config
from src.data.feed import feed_settings
from src.model.layers import Layers
from src.train.precision import PrecisionPlan, precision_plan
from src.train.step_feed import LoopPlan, loop_plan


@dataclass(frozen=True)
class RunPlan:
    """``layers``: which kernels the network runs; ``precision``: its precision, loss scale
    and overflow check; ``loop``: data sink and read-back interval; ``processes``: the
    augmentation runs in worker processes (else threads), ``workers`` of them; ``uint8``:
    images go to the device as uint8, normalised there."""

    platform: str
    layers: Layers
    precision: PrecisionPlan
    loop: LoopPlan
    processes: bool
    uint8: bool
    workers: int

    def describe_feed(self) -> str:
        """The feed's half-line of the run's summary."""
        return (f"{self.workers} worker {'processes' if self.processes else 'threads'}, "
                f"{'uint8 images normalised on the device' if self.uint8 else 'float32 images'}"
                f"{', through the data sink' if self.loop.sink else ''}"
                f"{f'; steps read back every {self.loop.read_every}' if self.loop.read_every > 1 else ''}")  # noqa: E501


def create_run_plan(config: Config, platform: str) -> RunPlan:
    """The plan of ``config`` on ``platform`` ('CPU', 'GPU', 'Ascend'); raises ValueError for a
    combination the platform cannot run (fp16 through our CPU kernels, a data sink on CPU)."""
    layers = Layers.from_config(config, platform)
    processes, uint8 = feed_settings(config, platform)
    return RunPlan(platform, layers, precision_plan(config, platform, layers.ours),
                   loop_plan(config, platform), processes, uint8, config.workers)
