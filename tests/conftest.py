"""8 simulated CPU devices for every test; must run before JAX initialises.

Tests are dominated by XLA compilation of tiny programs, which LLVM's backend
optimisations roughly double; the tests compare results computed under the same flags.
The entry points the tests start as subprocesses compile the same few programs again and
again, so each test process (each pytest-xdist worker) shares one JAX persistent
compilation cache with the entry points it starts (fresh each run, so nothing carries over
between runs of the suite).
"""

import atexit
import os
import shutil
import tempfile

from tests.helpers import TEST_XLA_FLAGS

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS, "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_compilation_cache = tempfile.mkdtemp(prefix="ladd_tests_xla_cache_")
atexit.register(shutil.rmtree, _compilation_cache, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_compilation_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


@pytest.fixture(scope="session")  # one registration of the builder per process (tfds refuses a second)
def tiny_tfds(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")

  class LaddTinyText(tfds.core.GeneratorBasedBuilder):
    # Preparing a builder that lives in a package makes tfds import
    # importlib_resources, which it does not install on Python >= 3.9; a top-level
    # module name avoids that. (Reading prepared data never needs it.)
    __module__ = "ladd_tiny_text"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 60),
              "validation": self._generate_examples(100, 20)}

    def _generate_examples(self, first, count):
      for i in range(first, first + count):
        yield i, {"text": f"Record {i}: the rain in Spain falls mainly."}

  data_dir = tmp_path_factory.mktemp("tfds")
  LaddTinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return tfds, str(data_dir)
