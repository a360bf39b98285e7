"""How training batches are fed on a platform: worker threads or processes, float32 or uint8
images. Imports no MindSpore, so that the checks before MindSpore starts
(``src.prerequisites``) apply the same rule as the pipeline (``src.data.pipeline``)."""
from src.config import Config


def feed_settings(config: Config, platform: str) -> tuple:
    """(worker processes?, uint8 images?) of ``config``'s data_workers and input_dtype on
    ``platform``: auto is threads and float32 on CPU (the model trains there; threads were
    faster), processes and uint8 on GPU and Ascend (an accelerator needs hundreds of images a
    second, and a third of the bytes)."""
    accelerator = platform != "CPU"
    processes = config.data_workers == "processes" or (config.data_workers == "auto"
                                                        and accelerator)
    uint8 = config.input_dtype == "uint8" or (config.input_dtype == "auto" and accelerator)
    return processes, uint8
