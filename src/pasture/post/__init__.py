"""Post-training as Llama 3 did it: SFT, reward model, rejection sampling, DPO and model
averaging, in rounds (docs/formats.md, "Post-training data" and "Post-training run folder")."""
