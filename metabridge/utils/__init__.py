"""Small framework-free helpers shared by every layer (atomic writes, statistics).

Nothing here imports a framework or any other part of metabridge, so ``data/``
may use it without breaking its numpy-only rule.
"""
