import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("convlib", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("convlib")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
