"""How the training loop gets its steps and reads them back.

A step's batch is fed from the host (one Python iteration per batch, the CPU's only way) or
sunk into the device's queue with ``ms.data_sink`` (GPU and Ascend: the next batches are on the
device before the step asks for them). Either way a step gives back tensors - loss, class and
box losses, the overflow flag, the loss scale, the images' ids - that the loop reads only every
``read_every`` steps: each read waits for the device, so an accelerator reading every step
idles between steps. Both choices come from the config in one place, ``loop_plan``.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from src.config import Config
from src.data.pipeline import batches, decode_failures_named

SINK_PLATFORMS = ("GPU", "Ascend")
ACCELERATOR_READ_EVERY = 10   # steps between reads with --log_interval 0 on GPU and Ascend


@dataclass(frozen=True)
class LoopPlan:
    """``sink``: batches go through ``ms.data_sink``; ``read_every``: steps between reads of
    the step's outputs (log rows, progress bar, the non-finite check, the stop agreement)."""
    sink: bool
    read_every: int


def loop_plan(config: Config, platform: str) -> LoopPlan:
    """The loop of ``config``'s data_sink and log_interval on ``platform``: auto sinks on GPU
    and Ascend and reads every ``ACCELERATOR_READ_EVERY`` steps there; on CPU it feeds from the
    host and reads every step (MindSpore 2.10 has no CPU dataset queue, so a sink there is
    refused)."""
    accelerator = platform in SINK_PLATFORMS
    sink = config.data_sink == "on" or (config.data_sink == "auto" and accelerator)
    if sink and not accelerator:
        raise ValueError(f"--data_sink on: MindSpore 2.10 sinks data only on "
                         f"{' and '.join(SINK_PLATFORMS)} (the {platform} backend has no dataset "
                         "queue: InitDataSetQueue); use --data_sink auto or off")
    read_every = config.log_interval or (ACCELERATOR_READ_EVERY if accelerator else 1)
    return LoopPlan(sink, read_every)


def host_steps(train_step: Callable, data, files: Sequence[str]) -> Iterator[tuple]:
    """Each batch of pipeline ``data`` (over MindRecord ``files``) fed to ``train_step``:
    yields (loss, cls_loss, loc_loss, finite, loss_scale, img_id), unread."""
    with contextlib.closing(batches(data, files, num_epochs=1)) as rows:
        for image, box, label, num_match, img_id in rows:
            yield (*train_step(image, box, label, num_match), img_id)


def sunk_steps(train_step: Callable, data, files: Sequence[str], steps: int,
               sink: Optional[Callable] = None) -> Iterator[tuple]:
    """``steps`` steps of ``train_step`` on ``data`` through the device queue (``sink``:
    ``ms.data_sink`` unless given); yields what ``host_steps`` does. An image that cannot be
    decoded raises the DatasetError naming it, as on the host.

    The queue is released when the steps end, and when the generator is closed early (a stop,
    an error): ``ms.data_sink`` starts sending for ever (``send(-1)``) and keeps the sender
    in a reference cycle with the dataset, so without it the pipeline would go on augmenting
    into its queue until the garbage collector happened to run."""
    if sink is None:
        import mindspore as ms

        sink = ms.data_sink

    def one_step(image, box, label, num_match, img_id):
        return (*train_step(image, box, label, num_match), img_id)

    run = sink(one_step, data)
    try:
        for _ in range(steps):
            with decode_failures_named(files):
                outputs = run()
            yield outputs
    finally:
        release_sink(data)


def release_sink(data) -> None:
    """Stop and release the device queue ``ms.data_sink`` made for ``data``, if any."""
    transfer = getattr(data, "__transfer_dataset__", None)
    if transfer is not None:
        transfer.release()
