"""8 simulated CPU devices for every test; must run before JAX initialises.

Tests are dominated by XLA compilation of tiny programs, which LLVM's backend
optimisations roughly double; the tests compare results computed under the same flags.
"""

import os

from tests.helpers import TEST_XLA_FLAGS

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS, "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
