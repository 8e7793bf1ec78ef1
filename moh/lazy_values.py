"""A mapping whose values are computed when first read.

The training step hands its logger per-group gradient norms and per-term aux losses, but only
logged steps read them; each value is a tensor operation or two, and inside a step every tensor
operation costs a few microseconds (docs/benchmarks.md, "Sixth session"). So the step builds the
one tensor the values come from, and this mapping makes each value from it on demand, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any


class LazyValues(Mapping):
    """{key: value_of(key)} over `keys` (in their order), each value computed on first read and
    kept; value_of may return None (a key with no value)."""

    def __init__(self, keys: Iterable[str], value_of: Callable[[str], Any]):
        self._keys, self._value_of, self._values = tuple(keys), value_of, {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            if key not in self._keys:
                raise KeyError(key)
            self._values[key] = self._value_of(key)
        return self._values[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
