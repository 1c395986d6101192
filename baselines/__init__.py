"""DAMBench baselines: one file per model in ``models/``, a timm-style registry, shared layers."""
