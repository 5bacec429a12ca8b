"""Training the avatar: subject data, the training loop, checkpoints."""
