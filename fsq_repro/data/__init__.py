"""Input pipeline (TFDS -> per-process batches) and the embedded dataset."""

from fsq_repro.data.pipeline import create_split
from fsq_repro.data.pipeline import default_data_dir
from fsq_repro.data.pipeline import EMBEDDED_DATASET
from fsq_repro.data.pipeline import num_classes
from fsq_repro.data.pipeline import num_examples
