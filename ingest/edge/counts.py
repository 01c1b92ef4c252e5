"""How many of something each key (a client, a buyer) holds, under a cap per key."""

from __future__ import annotations


class Counts:
    """How many of something each key holds, at most `per_key_max` each. A key holding nothing
    is forgotten, so memory is bounded by what is held, not by how many keys ever came."""

    def __init__(self, per_key_max: int) -> None:
        self.per_key_max = per_key_max
        self._held: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        held = self._held.get(key, 0)
        if held >= self.per_key_max:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._held.get(key, 0)
        if held <= 1:
            self._held.pop(key, None)
        else:
            self._held[key] = held - 1

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def __len__(self) -> int:
        return len(self._held)
