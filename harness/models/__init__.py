"""DINOv2 backbones: the variant table, the model, and where weights come from."""
