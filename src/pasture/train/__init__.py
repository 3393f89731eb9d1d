"""Pre-training: token shards, the packed loader, the training loop, checkpoints."""
