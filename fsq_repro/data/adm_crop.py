"""The reference images' preprocessing of the ADM suite: guided-diffusion's `center_crop_arr`.

ADM's reference batches (VIRTUAL_imagenet{64,128,256}_labeled.npz) hold images that were
decoded with PIL, halved with BOX filtering while the short side is at least twice the
target, resized with PIL bicubic so the short side equals the target, then centre-cropped.
Our pipeline's eval crop (crop first, then TF bicubic with antialiasing) gives pixels that
differ by a level or two on average, so our own reference statistics use this function.
"""

import io

import numpy as np
from PIL import Image

# Names this preprocessing in cache keys: change it when the function's output changes.
VERSION = "adm-center-crop-arr-pil"


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
  """A PIL RGB image -> uint8 [image_size, image_size, 3], exactly as ADM computes it."""
  while min(image.size) >= 2 * image_size:
    image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
  scale = image_size / min(image.size)
  image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)),
                       resample=Image.BICUBIC)
  pixels = np.asarray(image)
  top = (pixels.shape[0] - image_size) // 2
  left = (pixels.shape[1] - image_size) // 2
  return pixels[top:top + image_size, left:left + image_size]


def decode_and_crop(encoded: bytes, image_size: int) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG) -> `center_crop_arr` of the RGB image, decoded by PIL as
  ADM's loader decodes it."""
  image = Image.open(io.BytesIO(encoded))
  image.load()
  return center_crop_arr(image.convert("RGB"), int(image_size))
