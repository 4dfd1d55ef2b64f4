"""Model tests compile many small graphs: XLA's optimisation passes would dominate their time."""

import jax
import pytest


@pytest.fixture(scope="package", autouse=True)
def fast_compile():
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
