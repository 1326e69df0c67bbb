"""Training: SAE families through SAE-Lens' trainer, and LocA-SAE registered as SAE-Lens architecture "loca"."""
