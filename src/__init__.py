"""SSD-ResNet34 for MindSpore: model, data, training and evaluation.

Entry points go through ``src.cli.run``: it parses the configuration (``src.config`` imports no
MindSpore), settles what must be set before MindSpore loads (``src.device.prepare_process``:
the oneDNN instruction-set cap, the kernels' threads), then imports and runs the entry function.
"""
