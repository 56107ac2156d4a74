"""The file names that make a folder a model of some kind."""

from __future__ import annotations

WD14_MODEL = "model.onnx"  # a WD14 tagger folder: the network ...
WD14_TAGS = "selected_tags.csv"  # ... and its tag list
