"""Training the avatar: sampler, losses, config, the loop, pose fitting, checkpoints."""
