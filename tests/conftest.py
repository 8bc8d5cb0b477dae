import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

import pytest

import tiny_configs


@pytest.fixture
def tiny_config():
  """The demo config shrunk so a training step compiles and runs in seconds."""
  return tiny_configs.tiny_config
