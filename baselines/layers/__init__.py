"""Blocks shared by two or more baselines."""
