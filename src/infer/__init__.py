"""Inference: engines (MindSpore, onnxruntime, OpenVINO, int8), evaluation, eval.py, predict.py
and export. Imports nothing of src/train."""
