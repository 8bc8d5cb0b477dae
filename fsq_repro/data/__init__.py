"""Input pipelines (TFDS -> per-process batches), the embedded datasets, Stage I token files."""
