"""Hydra launcher plugins shipped with the harness (found by Hydra's plugin scan of ``hydra_plugins``)."""
