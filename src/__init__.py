"""SSD-ResNet34 for MindSpore: model, data, training and evaluation.

Importing this package caps oneDNN's CPU instruction set before MindSpore can load (see
``src.device.cap_onednn_isa``); every entry point imports ``src`` first, so the cap is in place
for the first convolution.
"""
from src.device import cap_onednn_isa

cap_onednn_isa()
