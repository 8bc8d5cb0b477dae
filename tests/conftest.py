import os
import shutil
import sys
import tempfile

# Every cache and data directory of this session (and of its subprocesses) lives in one
# temporary directory, set before any test module imports a library that reads these
# variables: no test reads or writes ~/.cache, and none depends on what an earlier run left.
# The embedded dataset is prepared there once per session; weight variables are unset.
# Programs that tests compile more than once (the same train step in a resumed run, in a
# subprocess) come from one session-wide JAX compilation cache there too.
CACHE_ROOT = tempfile.mkdtemp(prefix="fsq_repro_tests_")
for _name in ("FSQ_INCEPTION_WEIGHTS", "FSQ_LPIPS_WEIGHTS", "FSQ_RESNET50_WEIGHTS"):
  os.environ.pop(_name, None)
os.environ["FSQ_CACHE_DIR"] = os.path.join(CACHE_ROOT, "fsq_repro")
os.environ["FSQ_DATA_DIR"] = os.path.join(CACHE_ROOT, "tfds")
os.environ["MPLCONFIGDIR"] = os.path.join(CACHE_ROOT, "matplotlib")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(CACHE_ROOT, "jax")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

import pytest  # pylint: disable=wrong-import-position

import tiny_configs  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session", autouse=True)
def temporary_caches():
  """The session's cache root; removed when the session ends."""
  yield CACHE_ROOT
  shutil.rmtree(CACHE_ROOT, ignore_errors=True)


@pytest.fixture
def tiny_config():
  """The demo config shrunk so a training step compiles and runs in seconds."""
  return tiny_configs.tiny_config
