"""Data: source readers (COCO ...), MindRecord conversion, transforms and pipelines."""
