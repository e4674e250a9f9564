"""The library's random number generator: weight initialisation and dropout draw from it."""
import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed):
    """Reseed convlib's generator so initialisation and dropout repeat exactly."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng():
    """The generator in use (a ``numpy.random.Generator``)."""
    return _rng
