"""`fsq_photo_crops`: an embedded, download-free TFDS dataset of photo crops.

Crops of eight photographs that ship inside scikit-image, labelled by source
photo, so the whole pipeline (Stage I, class-conditional Stage II, evaluation)
runs on one CPU without any download. Each photo is first resized so that its
short side is `PHOTO_SHORT_SIDE` pixels (a 40 px crop then holds a recognisable
part of the scene), then split by columns: train crops come from the left
`TRAIN_FRACTION` of the columns, validation crops from the rest, so no
validation pixel is ever seen in training. Every example records its
`source_box` (top, left, bottom, right) in the resized photo's pixels.
"""

import functools

import numpy as np
import PIL.Image
import skimage.data
import tensorflow_datasets as tfds

# Photos with distinct content that load offline; gray ones become RGB.
CLASS_NAMES = (
    "astronaut", "camera", "chelsea", "coffee", "rocket",
    "immunohistochemistry", "hubble_deep_field", "retina",
)
PHOTO_SHORT_SIDE = 192
CROP_SIZE = 40
TRAIN_FRACTION = 0.75
CROPS_PER_CLASS = {"train": 512, "validation": 128}
SEED = 20240117
# Crops flatter than this (pixel std over [0, 255]) are rejected: the black
# borders of `retina` and the empty sky of `hubble_deep_field` look alike.
MIN_CROP_STD = 12.0


# The photos that are gray (all three channels equal): colorization leaves them out.
GRAY_PHOTOS = ("camera",)


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
  """Photo `name` as uint8 RGB [H, W, 3] with short side PHOTO_SHORT_SIDE."""
  if name not in CLASS_NAMES:
    raise ValueError(f"photo {name!r} is not one of {CLASS_NAMES}")
  photo = PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
  scale = PHOTO_SHORT_SIDE / min(photo.size)
  size = (round(photo.width * scale), round(photo.height * scale))
  resized = np.asarray(photo.resize(size, PIL.Image.Resampling.BICUBIC))
  resized.setflags(write=False)  # Cached and shared: nobody may modify it.
  return resized


def region_columns(photo_width: int, split: str) -> tuple[int, int]:
  """The [first, last) columns of a resized photo that `split` crops from."""
  boundary = int(photo_width * TRAIN_FRACTION)
  if split == "train":
    return 0, boundary
  if split == "validation":
    return boundary, photo_width
  raise ValueError(f"split {split!r} must be 'train' or 'validation'")


def sample_boxes(photo: np.ndarray, split: str, count: int,
                 rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
  """Distinct CROP_SIZE boxes in the split's columns; flat crops rejected."""
  first, last = region_columns(photo.shape[1], split)
  tops = np.arange(photo.shape[0] - CROP_SIZE + 1)
  lefts = np.arange(first, last - CROP_SIZE + 1)
  corners = np.stack(np.meshgrid(tops, lefts, indexing="ij"), -1).reshape(-1, 2)
  boxes = []
  for top, left in corners[rng.permutation(len(corners))]:
    crop = photo[top:top + CROP_SIZE, left:left + CROP_SIZE]
    if crop.std() >= MIN_CROP_STD:
      boxes.append((int(top), int(left), int(top) + CROP_SIZE,
                    int(left) + CROP_SIZE))
      if len(boxes) == count:
        return boxes
  raise ValueError(f"only {len(boxes)} of {count} {split} crops have content;"
                   " lower MIN_CROP_STD or CROPS_PER_CLASS")


class FsqPhotoCrops(tfds.core.GeneratorBasedBuilder):
  """Crops of scikit-image photos labelled by photo; disjoint train/val."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Eight photos, 40x40 crops, 512/128 per class."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f"{CROP_SIZE}x{CROP_SIZE} RGB crops of {len(CLASS_NAMES)} "
            "scikit-image photos (labels = source photo), each photo resized "
            f"to short side {PHOTO_SHORT_SIDE}. Train crops lie in the left "
            f"{TRAIN_FRACTION:.0%} of a photo's columns, validation crops in "
            "the rest, so the splits share no pixels. Generated offline with "
            f"seed {SEED}; `source_box` = (top, left, bottom, right)."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(CROP_SIZE, CROP_SIZE, 3)),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "source_box": tfds.features.Tensor(shape=(4,), dtype=np.int32),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the photos ship with scikit-image.
    return {split: self._generate_examples(split) for split in CROPS_PER_CLASS}

  def _generate_examples(self, split: str):
    split_id = list(CROPS_PER_CLASS).index(split)
    for label, name in enumerate(CLASS_NAMES):
      photo = load_photo(name)
      rng = np.random.default_rng([SEED, label, split_id])
      boxes = sample_boxes(photo, split, CROPS_PER_CLASS[split], rng)
      for i, (top, left, bottom, right) in enumerate(boxes):
        yield f"{name}_{i:04d}", {
            "image": photo[top:bottom, left:right],
            "label": label,
            "source_box": np.array([top, left, bottom, right], np.int32),
        }
