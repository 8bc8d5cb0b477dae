"""Input pipelines (TFDS -> Grain -> each process's rows of the global batches), the embedded
datasets, Stage I token files."""
