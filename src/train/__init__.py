"""Training: the Trainer and its parts (train step, feed, hooks, checkpoints, run folder and log,
stop requests, the run plan). Imports src/infer (evaluation during training), never the reverse."""
