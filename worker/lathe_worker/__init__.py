"""Lathe compute worker: one base model, many LoRA adapters, trained and sampled together."""
