"""`image_folder:<dir>`: a directory of class subfolders of JPEG/PNG files, as a TFDS dataset.

  <dir>/<class>/**/*.jpg|*.jpeg|*.png          every image in split 'train'
  <dir>/{train,validation,test}/<class>/...    explicit splits

Labels are the class folder names in sorted order (the union over splits). The folder is
converted once into a prepared TFDS dataset under the data dir, named by a fingerprint of
every file's path, size and mtime (so a changed folder is converted again), and then it is
read like any TFDS dataset: split slicing ('train[:90%]'), deterministic resumable global
batches.

Unreadable or truncated images are skipped and counted, never fatal: at conversion each file
is decoded with the decoder training uses; a warning names the count and the first paths,
and the dataset's metadata keeps them ('skipped_files'). A split left with no readable
image is an error.
"""

import dataclasses
import hashlib
import io
import os
import re

import PIL.Image
import tensorflow_datasets as tfds
from absl import logging

from fsq_repro.data import images

PREFIX = "image_folder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_FOLDERS = ("train", "validation", "test")
SHOWN_SKIPPED = 20  # paths of skipped files kept in the metadata and the warning


@dataclasses.dataclass(frozen=True)
class Folder:
  """A scanned image folder: (path relative to root, label) per image, per split."""
  root: str
  class_names: tuple[str, ...]
  files: dict = dataclasses.field(repr=False)  # split -> tuple of (relative path, label)
  fingerprint: str


def is_image_folder(dataset_name: str) -> bool:
  return dataset_name.startswith(PREFIX)


def _subfolders(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory)
                if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def _images_under(directory: str) -> list[str]:
  found = []
  for path, dirnames, filenames in os.walk(directory):
    dirnames.sort()
    found += [os.path.join(path, f) for f in sorted(filenames)
              if f.lower().endswith(IMAGE_SUFFIXES)]
  return found


def scan(dataset_name: str) -> Folder:
  """Lists `image_folder:<dir>`; fails in one line on a missing or empty directory."""
  root = os.path.abspath(os.path.expanduser(dataset_name[len(PREFIX):]))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"dataset.name={dataset_name!r}: {root} is not a directory; give "
                            "image_folder:<dir> with one subfolder of JPEG/PNG files per class")
  subfolders = _subfolders(root)
  if subfolders and set(subfolders) <= set(SPLIT_FOLDERS):
    split_dirs = {split: os.path.join(root, split) for split in subfolders}
  else:
    split_dirs = {"train": root}
  class_names = tuple(sorted({c for d in split_dirs.values() for c in _subfolders(d)}))
  if not class_names:
    raise ValueError(f"dataset.name={dataset_name!r}: {root} has no class subfolders; put "
                     "each class's JPEG/PNG files in a subfolder named after the class")
  digest = hashlib.sha256(root.encode())
  files = {}
  for split, split_dir in split_dirs.items():
    entries = []
    for label, name in enumerate(class_names):
      for path in _images_under(os.path.join(split_dir, name)):
        relative, stat = os.path.relpath(path, root), os.stat(path)
        digest.update(f"{relative}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        entries.append((relative, label))
    if not entries:
      raise ValueError(f"dataset.name={dataset_name!r}: no .jpg/.jpeg/.png files in the class "
                       f"subfolders of {split_dir}")
    files[split] = tuple(entries)
  return Folder(root, class_names, files, digest.hexdigest()[:16])


def decodes(data: bytes) -> bool:
  """Whether `data` is a whole image file (PIL's verify: no truncation, valid checksums) that
  the pipeline's decoder (images.decode) reads as an RGB image."""
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.verify()
    images.decode(data)
    return True
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
    return False


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  folder: Folder | None = None


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images of one scanned folder, labelled by class subfolder."""

  name = "image_folder"
  VERSION = tfds.core.Version("1.0.0")
  _configs: dict[str, FolderConfig] = {}  # every config built in this process, by name

  @classmethod
  def get_builder_config(cls, name, version=None):
    # Per-folder configs are made at run time; knowing them keeps TFDS from warning.
    del version
    return cls._configs.get(name)

  def _info(self):
    folder = self.builder_config.folder
    return tfds.core.DatasetInfo(
        builder=self, description=f"Images under {folder.root}, labelled by class folder.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=folder.class_names)}),
        supervised_keys=("image", "label"), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata["skipped_files"] = {}
    return {split: self._generate_examples(split) for split in self.builder_config.folder.files}

  def _generate_examples(self, split):
    folder = self.builder_config.folder
    entries, skipped = folder.files[split], []
    for relative, label in entries:
      with open(os.path.join(folder.root, relative), "rb") as f:
        data = f.read()
      if not decodes(data):
        skipped.append(relative)
        continue
      yield relative, {"image": data, "label": label}
    self.info.metadata["skipped_files"][split] = {"count": len(skipped),
                                                 "first": skipped[:SHOWN_SKIPPED]}
    if len(skipped) == len(entries):
      raise ValueError(f"none of the {len(entries)} {split} images under {folder.root} "
                       "decodes as JPEG/PNG")
    if skipped:
      logging.warning("image_folder %s: skipped %d of %d %s files that do not decode as "
                      "JPEG/PNG (%s); they are left out", folder.root, len(skipped),
                      len(entries), split, ", ".join(skipped[:3]))


def builder(dataset_name: str, data_dir: str) -> ImageFolder:
  """The (maybe not yet prepared) TFDS builder of `image_folder:<dir>`."""
  folder = scan(dataset_name)
  slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder.root).lower()).strip("_")
  name = f"{slug[:40] or 'root'}_{folder.fingerprint}"
  config = ImageFolder._configs.setdefault(
      name, FolderConfig(name=name, folder=folder, description=f"Images under {folder.root}."))
  return ImageFolder(config=config, data_dir=data_dir)
