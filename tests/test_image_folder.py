"""The image-folder dataset: labels from class folders, splits, skipped bad files, errors."""

import io
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import PIL.Image  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from fsq_repro.data import image_folder, pipeline  # pylint: disable=g-import-not-at-top

# Uniform images: every pixel of class c is CLASS_VALUES[c], so a decoded image names its class.
CLASS_VALUES = {"cat": 30, "dog": 120, "fox": 220}


def write_image(path, value, size=(20, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(np.full(size + (3,), value, np.uint8)).save(
      path, "PNG" if path.lower().endswith(".png") else "JPEG")


def make_folder(root, per_class=4):
  """per_class images per class: PNG and JPEG, some nested, one with an upper-case suffix."""
  for name, value in CLASS_VALUES.items():
    for i in range(per_class):
      relative = [f"{i}.png", f"deeper/{i}.JPG", f"{i}.jpeg", f"{i}.jpg"][i % 4]
      write_image(os.path.join(root, name, relative), value, size=(20 + i, 30))
  with open(os.path.join(root, "cat", "notes.txt"), "w") as f:
    f.write("not an image, not counted")
  return f"image_folder:{root}"


def all_examples(name, data_dir, split="train"):
  batches = pipeline.create_split(name, split, batch_size=64, image_size=8, train=False,
                                  data_dir=data_dir, drop_remainder=False)
  batch = next(batches)
  return batch["image"][batch["mask"]], batch["label"][batch["mask"]]


def test_class_folders_become_labels(tmp_path):
  name = make_folder(str(tmp_path / "photos"))
  data_dir = str(tmp_path / "tfds")
  assert pipeline.num_classes(name, data_dir=data_dir) == 3
  assert pipeline.num_examples(name, "train", data_dir=data_dir) == 12
  images, labels = all_examples(name, data_dir)
  assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
  values = np.array(list(CLASS_VALUES.values()))  # labels follow the sorted folder names
  np.testing.assert_allclose(images.mean(axis=(1, 2, 3)) * 255, values[labels], atol=1.5)


def test_training_batches_resume_exactly(tmp_path):
  name = make_folder(str(tmp_path / "photos"))
  args = dict(batch_size=4, image_size=8, train=True, seed=5, data_dir=str(tmp_path / "tfds"))
  straight = pipeline.create_split(name, "train", **args)
  first = [next(straight) for _ in range(7)]  # crosses two epochs of 3 batches
  resumed = pipeline.create_split(name, "train", start_step=4, **args)
  for expected in first[4:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])


def test_unreadable_and_truncated_images_are_skipped_and_counted(tmp_path, caplog):
  root = str(tmp_path / "photos")
  name = make_folder(root)
  with open(os.path.join(root, "dog", "garbage.jpg"), "wb") as f:
    f.write(b"this is not a JPEG")
  encoded = io.BytesIO()
  PIL.Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(encoded, "PNG")
  with open(os.path.join(root, "fox", "truncated.png"), "wb") as f:
    f.write(encoded.getvalue()[:-12])
  data_dir = str(tmp_path / "tfds")
  with caplog.at_level(logging.WARNING):
    assert pipeline.num_examples(name, "train", data_dir=data_dir) == 12
  warning = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(warning) == 1 and "skipped 2 of 14 train files" in warning[0], warning
  assert "\n" not in warning[0]
  skipped = pipeline._builder(name, data_dir).info.metadata["skipped_files"]["train"]
  assert skipped == {"count": 2, "first": ["dog/garbage.jpg", "fox/truncated.png"]}
  _, labels = all_examples(name, data_dir)  # every kept file decodes in training's pipeline
  assert len(labels) == 12


def test_split_folders_give_splits_and_slices_work(tmp_path):
  root = tmp_path / "photos"
  for split, classes in (("train", ("a", "b")), ("validation", ("b", "c"))):
    for label_name in classes:
      for i in range(3):
        write_image(str(root / split / label_name / f"{i}.png"), 10 * i)
  name, data_dir = f"image_folder:{root}", str(tmp_path / "tfds")
  assert pipeline.num_classes(name, data_dir=data_dir) == 3  # a, b, c over both splits
  assert pipeline.num_examples(name, "train", data_dir=data_dir) == 6
  assert pipeline.num_examples(name, "validation", data_dir=data_dir) == 6
  assert pipeline.num_examples(name, "train[:50%]", data_dir=data_dir) == 3
  _, labels = all_examples(name, data_dir, "validation")
  assert sorted(labels.tolist()) == [1, 1, 1, 2, 2, 2]


def test_a_changed_folder_is_converted_again(tmp_path):
  root = str(tmp_path / "photos")
  name, data_dir = make_folder(root), str(tmp_path / "tfds")
  assert pipeline.num_examples(name, "train", data_dir=data_dir) == 12
  write_image(os.path.join(root, "dog", "new.png"), CLASS_VALUES["dog"])
  assert pipeline.num_examples(name, "train", data_dir=data_dir) == 13
  assert len(os.listdir(os.path.join(data_dir, "image_folder"))) == 2


def test_bad_folders_fail_in_one_line(tmp_path):
  data_dir = str(tmp_path / "tfds")
  (tmp_path / "no_classes").mkdir()
  (tmp_path / "empty_classes" / "cat").mkdir(parents=True)
  bad_root = tmp_path / "all_bad" / "cat"
  bad_root.mkdir(parents=True)
  (bad_root / "x.jpg").write_bytes(b"junk")
  cases = [("missing", FileNotFoundError, "is not a directory"),
           ("no_classes", ValueError, "has no class subfolders"),
           ("empty_classes", ValueError, "no .jpg/.jpeg/.png files"),
           ("all_bad", ValueError, "decodes as JPEG/PNG")]
  for folder, error, message in cases:
    with pytest.raises(error, match=message) as raised:
      pipeline.num_examples(f"image_folder:{tmp_path / folder}", "train", data_dir=data_dir)
    assert "\n" not in str(raised.value)


def test_scan_lists_images_only_and_fingerprints_contents(tmp_path):
  root = str(tmp_path / "photos")
  name = make_folder(root, per_class=2)
  folder = image_folder.scan(name)
  assert folder.class_names == ("cat", "dog", "fox")
  assert folder.files["train"][:2] == (("cat/0.png", 0), ("cat/deeper/1.JPG", 0))
  before = folder.fingerprint
  write_image(os.path.join(root, "cat", "0.png"), 99, size=(21, 31))  # same name, new bytes
  assert image_folder.scan(name).fingerprint != before
