"""The training loop's feed and reads: host feeding or the data sink by platform, and the sink's
glue (ms.data_sink itself runs only on GPU and Ascend)."""
import numpy as np
import pytest

from src.config import Config, ConfigError
from src.train.step_feed import ACCELERATOR_READ_EVERY, host_steps, loop_plan, sunk_steps


def host_sink(fn, data):
    """ms.data_sink's contract on the host: each call runs ``fn`` on the next row."""
    rows = data.create_tuple_iterator(num_epochs=1)
    return lambda: fn(*next(rows))


def test_loop_plan_sinks_and_reads_less_often_only_on_accelerators():
    plan = loop_plan(Config(), "CPU")
    assert (plan.sink, plan.read_every) == (False, 1)
    for platform in ("GPU", "Ascend"):
        plan = loop_plan(Config(), platform)
        assert (plan.sink, plan.read_every) == (True, ACCELERATOR_READ_EVERY)
    plan = loop_plan(Config(data_sink="off", log_interval=3), "GPU")
    assert (plan.sink, plan.read_every) == (False, 3)
    assert loop_plan(Config(log_interval=5), "CPU").read_every == 5
    with pytest.raises(ValueError, match="--data_sink on: MindSpore 2.10 sinks data only on "
                                         "GPU and Ascend.*--data_sink auto or off"):
        loop_plan(Config(data_sink="on"), "CPU")
    with pytest.raises(ConfigError, match="log_interval: -1 is out of range"):
        Config(log_interval=-1).validate()


def test_sunk_steps_give_the_host_feed_steps_in_order(graph_cpu):
    import mindspore.dataset as ds

    rows = {"image": np.arange(6, dtype=np.float32).reshape(6, 1), "box": np.ones((6, 2)),
            "label": np.zeros((6, 2), np.int32), "num_match": np.ones((6, 1), np.int32),
            "img_id": np.arange(10, 16, dtype=np.int32).reshape(6, 1)}

    def data():
        return ds.NumpySlicesDataset(rows, column_names=list(rows), shuffle=False)

    def train_step(image, box, label, num_match):   # the train step's five outputs
        value = float(image.asnumpy()[0])
        return value, value + 1, value + 2, True, 1.0

    fed = list(host_steps(train_step, data(), ["unused.mindrecord"]))
    sunk = list(sunk_steps(train_step, data(), ["unused.mindrecord"], 4, sink=host_sink))
    assert [out[:5] for out in fed] == [(float(v), v + 1.0, v + 2.0, True, 1.0)
                                        for v in range(6)]
    assert [int(out[5].asnumpy()[0]) for out in fed] == list(range(10, 16))
    assert len(sunk) == 4
    assert [out[:5] for out in sunk] == [out[:5] for out in fed[:4]]
    assert [int(out[5].asnumpy()[0]) for out in sunk] == list(range(10, 14))


class FakeRows:
    """A pipeline's iterator: numbered rows of five columns, and whether it was stopped."""

    def __init__(self, count):
        self.rows, self.stopped = iter([(i,) * 5 for i in range(count)]), False

    def __next__(self):
        return next(self.rows)

    def stop(self):
        self.stopped = True


class FakePipeline:
    """A dataset whose iterator and device queue (as ms.data_sink leaves it) can be watched."""

    def __init__(self, count):
        self.iterator = FakeRows(count)
        self.released = False

    def create_tuple_iterator(self, **options):
        return self.iterator

    def release(self):
        self.released = True


def fake_sink(fn, data):
    """ms.data_sink's bookkeeping: the queue it starts is kept on the dataset."""
    data.__transfer_dataset__ = data
    return lambda: fn(*next(data.iterator))


@pytest.mark.parametrize("early", [False, True])
def test_an_epochs_pipeline_is_released_when_its_steps_end_or_are_abandoned(early):
    """A stop (the trainer closes the steps) or the epoch's end stops the host iterator and
    releases ms.data_sink's queue, which would otherwise go on filling (it sends for ever)."""
    def step(*batch):
        return batch[:4]

    host, sunk = FakePipeline(4), FakePipeline(4)
    feeds = [host_steps(step, host, []), sunk_steps(step, sunk, [], 4, sink=fake_sink)]
    for steps in feeds:
        taken = [next(steps) for _ in range(2 if early else 4)]
        assert [row[0] for row in taken] == list(range(len(taken)))
        if early:
            steps.close()
        else:
            assert next(steps, None) is None
    assert host.iterator.stopped and sunk.released
    assert not host.released and not sunk.iterator.stopped


class RunPipeline(FakePipeline):
    """A training pipeline as the trainer asks for it: ``steps`` rows numbered from 0."""

    def __init__(self, steps, **arguments):
        super().__init__(steps)
        self.arguments = arguments


@pytest.mark.parametrize("resumed,sink,fails", [(False, False, False), (True, False, False),
                                                (False, True, False), (True, True, True)])
def test_a_run_trains_every_epoch_from_one_pipeline_closed_at_its_end(monkeypatch, resumed,
                                                                      sink, fails):
    """Trainer.run builds one pipeline (and with a data sink, one device queue) for all its
    epochs (from the resume position, mid-epoch too), takes each epoch's steps from it in order,
    and stops and releases it when the run ends, also when it ends in an error."""
    import functools
    import types

    import mindspore as ms

    from src.train import trainer as trainer_module
    from src.train.checkpoint import Position
    from src.train.hooks import HookBase
    from src.train.step_feed import LoopPlan

    made, ends = [], []

    def create(files, coder, batch_size, img_shape, **arguments):
        steps = arguments["epochs"] * 4 - arguments["skip"]
        made.append(RunPipeline(steps, **arguments))
        return made[-1]

    class Log:
        path = "unused.jsonl"

        def write(self, kind, **row):
            pass

        def close(self):
            pass

    monkeypatch.setattr(trainer_module, "create_train_dataset", create)
    monkeypatch.setattr(trainer_module, "sunk_steps", functools.partial(sunk_steps,
                                                                        sink=fake_sink))
    trainer = trainer_module.Trainer.__new__(trainer_module.Trainer)
    trainer.config = Config(epoch_size=3, batch_size=2, progress="off")
    trainer.run_info = types.SimpleNamespace(world=1, rank=0)
    trainer.prepared = types.SimpleNamespace(files=["unused.mindrecord"])
    trainer.coder, trainer.main, trainer.say = None, True, lambda *a, **k: None
    trainer.plan = types.SimpleNamespace(loop=LoopPlan(sink, 1), processes=False, uint8=False)
    trainer.steps_per_epoch, trainer.lr_table = 4, np.zeros(12, np.float32)
    trainer.position = Position(2, 1, 5) if resumed else Position(0, 4, 0)
    trainer.output_dir, trainer.log, trainer.checkpoint = "unused", Log(), None
    trainer.best_map = -1.0
    trainer.skipped_steps, trainer.nonfinite_in_a_row, trainer.epoch_losses = 0, 0, []
    trainer.train_step = lambda image, *batch: (ms.Tensor(np.float32(image)),) * 3 + (
        ms.Tensor(True), ms.Tensor(np.float32(1)))

    class Recorder(HookBase):
        """Each complete epoch's losses, each step's row and the run's end."""

        def __init__(self):
            self.steps, self.ended = [], False

        def after_step(self, row):
            self.steps.append(row["global_step"])

        def after_epoch(self, end):
            ends.append((end.epoch, end.losses))
            if fails and end.epoch == 2:
                raise RuntimeError("disk full")

        def after_train(self):
            self.ended = True

    recorder = Recorder()
    trainer.hooks = []
    trainer.register_hooks([recorder])
    if fails:
        with pytest.raises(RuntimeError, match="disk full"):
            trainer.run()
    else:
        trainer.run()
    assert len(made) == 1 and recorder.ended and recorder.trainer is trainer
    assert made[0].released if sink else made[0].iterator.stopped
    assert recorder.steps == list(range(6 if resumed else 1, 13 if not fails else 9))
    if fails:
        assert ends == [(2, [0.0, 1.0, 2.0])]
    elif resumed:
        assert (made[0].arguments["epoch"], made[0].arguments["epochs"],
                made[0].arguments["skip"]) == (2, 2, 1)
        assert ends == [(2, [0.0, 1.0, 2.0]), (3, [3.0, 4.0, 5.0, 6.0])]
    else:
        assert (made[0].arguments["epoch"], made[0].arguments["epochs"],
                made[0].arguments["skip"]) == (1, 3, 0)
        assert ends == [(e, [float(v) for v in range(4 * e - 4, 4 * e)]) for e in (1, 2, 3)]


def test_the_run_plan_settles_every_auto_once_per_platform():
    """create_run_plan: CPU trains fp32 from host-fed float32 batches in threads, read every
    step; GPU fp16 with processes, uint8 and the sink, read every 10; a refusal of the parts
    (a sink on CPU) comes from the plan, before anything is built."""
    from src.train.run_plan import create_run_plan

    cpu = create_run_plan(Config(conv_impl="mindspore"), "CPU")
    assert (cpu.precision.precision, cpu.processes, cpu.uint8, cpu.loop.sink) == (
        "fp32", False, False, False)
    assert cpu.layers.impl == "mindspore" and cpu.workers == Config().workers
    assert cpu.describe_feed() == f"{Config().workers} worker threads, float32 images"
    gpu = create_run_plan(Config(conv_impl="mindspore"), "GPU")
    assert (gpu.precision.precision, gpu.precision.dynamic, gpu.processes, gpu.uint8) == (
        "fp16", True, True, True)
    assert gpu.describe_feed().endswith("uint8 images normalised on the device, through the "
                                        f"data sink; steps read back every "
                                        f"{ACCELERATOR_READ_EVERY}")
    with pytest.raises(ValueError, match="--data_sink on"):
        create_run_plan(Config(data_sink="on"), "CPU")
