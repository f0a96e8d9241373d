"""Numpy-only datasets and samplers."""
