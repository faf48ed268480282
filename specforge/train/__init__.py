"""Draft training: the training-time-test loss, the accelerate loop, checkpoints, evaluation."""
