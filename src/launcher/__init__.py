"""The distributed-training launcher behind ``scripts/run_distribute_train.sh``.

``options`` reads the script's arguments, ``rank_table`` turns an Ascend rank table into the
processes to start on this host (a sub-table when ``DEVICE_NUM`` takes fewer devices),
``processes`` finds a job's workers in /proc, ``supervise`` runs and watches them (one process
per device, or msrun), and ``__main__`` puts these together. Nothing here imports MindSpore.
"""


class RefusalError(Exception):
    """A reason not to start, said before anything is created or started (exit status 2)."""


class UsageError(RefusalError):
    """The arguments do not fit the usage line; the message is the usage itself."""
