"""Training the embedder, evaluation, fusion calibration and model artifacts."""
