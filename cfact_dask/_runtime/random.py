"""Seed handling: every random stream is derived from a ``SeedSequence`` keyed by what it is for.

Tasks receive plain ``(entropy, spawn_key)`` seeds, never live generators, so that a task gives the
same numbers on whichever worker, in whichever order, it runs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SeedLike", "normalize_seed", "generator"]

SeedLike = int | np.random.SeedSequence | np.random.Generator | None


def normalize_seed(seed: SeedLike) -> int:
    """Turn any accepted seed into a plain nonnegative int that can be stored and shipped.

    ``None`` draws fresh OS entropy (recorded, so the run is still repeatable from its provenance).
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy) % (2**63)
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, np.random.SeedSequence):
        return int(seed.generate_state(2, np.uint64)[0] >> np.uint64(1))
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"seed must be an int, SeedSequence, Generator or None, not {seed!r}")
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        return int(seed)
    raise TypeError(
        f"seed must be an int, numpy SeedSequence, numpy Generator or None, not "
        f"{type(seed).__name__}"
    )


_BIT_GENERATORS = {"philox": np.random.Philox, "sfc64": np.random.SFC64}


def generator(seed: int, *key: int, bit_generator: str = "philox") -> np.random.Generator:
    """A generator for the stream ``key`` of ``seed`` (e.g. ``(purpose, tile_index)``).

    Philox by default; the dense Gaussian tiles use SFC64, the fastest of numpy's bit generators
    (the stream is still fixed by ``SeedSequence(seed, spawn_key=key)``).
    """
    bg = _BIT_GENERATORS[bit_generator]
    return np.random.Generator(bg(np.random.SeedSequence(seed, spawn_key=key)))
