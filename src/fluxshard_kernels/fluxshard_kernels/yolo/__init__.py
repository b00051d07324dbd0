"""YOLO11 pre/post-processing and inference backends."""
