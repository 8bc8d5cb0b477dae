"""Input throughput: images/s of the Stage I training pipeline, Grain against tf.data.

  python scripts/bench.py --configs= --input_sizes=128,256 \
      --tfdata_pipeline=/tmp/tfdata_pipeline.py

The data: an image folder of `NUM_IMAGES` JPEGs of ImageNet's typical size (500 x 375 and
375 x 500, quality 90), cut from the photos that ship with scikit-image, prepared once as a
TFDS dataset in a temporary directory. Each row times `BATCHES` batches of `BATCH_SIZE` after
a first batch (which starts the threads or worker processes): decode, random crop, resize,
flip. `--tfdata_pipeline` names a pipeline.py from before the Grain pipeline (for example
`git show a453ad7:fsq_repro/data/pipeline.py > /tmp/tfdata_pipeline.py`), imported under
another name, to time the tf.data pipeline in the same run; it reads the TFRecord files,
ours their ArrayRecord copy.
"""

import importlib.util
import os
import tempfile
import time

import numpy as np
import PIL.Image
import skimage.data

from fsq_repro.data import pipeline

NUM_IMAGES = 256
BATCH_SIZE = 64
BATCHES = 8
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # the classes


def write_image_folder(root: str) -> str:
  """NUM_IMAGES JPEGs in class folders under `root`; returns the dataset name."""
  rng = np.random.default_rng(0)
  for i in range(NUM_IMAGES):
    name = PHOTOS[i % len(PHOTOS)]
    photo = PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    scale = max(size[0] / photo.width, size[1] / photo.height) * rng.uniform(1.0, 1.5)
    photo = photo.resize((int(photo.width * scale) + 1, int(photo.height * scale) + 1))
    left = int(rng.integers(0, photo.width - size[0] + 1))
    top = int(rng.integers(0, photo.height - size[1] + 1))
    os.makedirs(os.path.join(root, name), exist_ok=True)
    photo.crop((left, top, left + size[0], top + size[1])).save(
        os.path.join(root, name, f"{i:04d}.jpg"), quality=90)
  return f"image_folder:{root}"


def load_tfdata_pipeline(path: str):
  """The module at `path` (an earlier fsq_repro/data/pipeline.py), as `tfdata_pipeline`."""
  spec = importlib.util.spec_from_file_location("tfdata_pipeline", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def images_per_second(create_split, dataset: str, data_dir: str, size: int, **kwargs) -> float:
  batches = create_split(dataset, "train", batch_size=BATCH_SIZE, image_size=size, train=True,
                         seed=0, data_dir=data_dir, process_index=0, process_count=1, **kwargs)
  next(batches)  # starts the threads or workers
  start = time.perf_counter()
  for _ in range(BATCHES):
    next(batches)
  return BATCHES * BATCH_SIZE / (time.perf_counter() - start)


def input_throughput(sizes: list[int], tfdata_pipeline: str | None = None,
                     workers=(0, 1, 2)) -> dict:
  """{'rows': [{pipeline, image_size, images_per_s}], 'markdown': table}."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    dataset = write_image_folder(os.path.join(tmp, "photos"))
    data_dir = os.path.join(tmp, "tfds")
    old = load_tfdata_pipeline(tfdata_pipeline) if tfdata_pipeline else None
    if old:  # prepares the TFRecord files it reads; ours then adds the ArrayRecord copy
      old.num_examples(dataset, "train", data_dir=data_dir)
    pipeline.num_examples(dataset, "train", data_dir=data_dir)
    for size in sizes:
      if old:
        rows.append({"pipeline": "tf.data (before)", "image_size": size, "images_per_s":
                     images_per_second(old.create_split, dataset, data_dir, size)})
      for count in workers:
        threads = "" if count else ", 2 threads"
        rows.append({"pipeline": f"grain, {count} workers{threads}", "image_size": size,
                     "images_per_s": images_per_second(pipeline.create_split, dataset,
                                                       data_dir, size, num_workers=count)})
  table = ["| pipeline | " + " | ".join(f"{s} px images/s" for s in sizes) + " |",
           "|---|" + "---|" * len(sizes)]
  for name in dict.fromkeys(r["pipeline"] for r in rows):
    values = [f"{r['images_per_s']:.0f}" for r in rows if r["pipeline"] == name]
    table.append(f"| {name} | " + " | ".join(values) + " |")
  return {"rows": rows, "markdown": "\n".join(table), "num_images": NUM_IMAGES,
          "batch_size": BATCH_SIZE, "batches": BATCHES}
