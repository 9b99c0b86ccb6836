"""Seeds and random streams: every random decision draws from a generator of its own.

A generator is derived from the run's seed, a salt naming the kind of decision and the integers
that identify it (member, step...), so a decision draws the same numbers whichever worker makes
it and whenever: that is what makes a synchronous run reproducible whatever the number of
workers.
"""

from __future__ import annotations

import numpy as np

# numpy imports ``numpy.random`` on first use: importing it with poptune lets forked worker
# processes inherit it instead of each paying the import (14 to 19 ms here) at its first draw.
import numpy.random

__all__ = ["derive_seed", "initial_rng", "rng_for"]

# Salts that keep the random streams of different decisions independent.
#: first hparams; exploit (and its explore); training and building a trainable; re-seeding
INIT, EXPLOIT, TRAIN, RESEED = 0, 1, 2, 3


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for one purpose, derived from the run seed and integer keys."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one decision, independent of which worker makes it and when."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def initial_rng(seed: int, member: int) -> np.random.Generator:
    """The generator that draws ``member``'s first hparams (salted apart from every decision)."""
    return rng_for(seed, INIT, member)
