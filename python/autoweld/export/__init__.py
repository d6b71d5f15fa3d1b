"""Export: turns fitted models into a model bundle (one ONNX graph + memory bank + manifest)."""
