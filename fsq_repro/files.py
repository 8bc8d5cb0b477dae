"""Files the project writes: whole-or-nothing writes, cross-process locks, the cache folder.

Named `files`, not `io`, so that it never shadows the standard library's `io`.
"""

import contextlib
import fcntl
import os
import uuid

CACHE_ENV_VAR = "FSQ_CACHE_DIR"
DATA_ENV_VAR = "FSQ_DATA_DIR"


def cache_dir() -> str:
  """Where derived artefacts are cached (offline FID network, reference statistics):
  $FSQ_CACHE_DIR, else ~/.cache/fsq_repro."""
  return os.environ.get(CACHE_ENV_VAR) or os.path.expanduser("~/.cache/fsq_repro")


def data_dir() -> str:
  """The TFDS data dir used when a config gives none: $FSQ_DATA_DIR, else <cache_dir>/tfds."""
  return os.environ.get(DATA_ENV_VAR) or os.path.join(cache_dir(), "tfds")


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
  """Yields a file opened at `path + '.<unique>.tmp'`; renames it to `path` only if the block
  succeeds.

  A reader never sees a half-written `path`, and a killed writer leaves only its .tmp file,
  which no reader's pattern matches. Each writer has its own temporary name, so processes
  writing the same file at once (two runs side by side computing one cached reference) each
  finish, and `path` holds one whole copy.
  """
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.{uuid.uuid4().hex}.tmp"
  try:
    with open(tmp, mode) as f:
      yield f
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: str):
  """Holds an exclusive lock on `path` (created if needed) between processes of one machine.

  Remote paths (gs://...) are not locked: what lives there is prepared beforehand.
  """
  if "://" in path:
    yield
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)
