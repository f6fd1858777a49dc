"""The training loop and its pieces: model/optimizer setup, the step, metrics, checkpoints."""
