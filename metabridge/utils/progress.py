"""Progress output for long runs: a tqdm bar on a terminal, silence elsewhere.

A leaf module (no metabridge imports), so the data layer (Omniglot's decode and
download) and the training layer can both use it without importing upward."""
from __future__ import annotations

import sys
from typing import Iterable


def progress(iterable: Iterable, total: int, desc: str, quiet: bool = False):
    """Wrap ``iterable`` in a progress bar unless ``quiet`` or stderr is not a terminal.

    The bar shows ``set_postfix`` values (loss) and the ETA.
    """
    enabled = not quiet and sys.stderr.isatty()
    if not enabled:
        return _Silent(iterable)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


class _Silent:
    def __init__(self, iterable):
        self._it = iterable

    def __iter__(self):
        return iter(self._it)

    def set_postfix(self, *args, **kwargs):
        pass
