"""Image file bytes -> the RGB pixels a viewer shows (PIL, EXIF orientation applied).

The decoding of the build (`coco_reader`) and of prediction (`predict_input`); `images`
holds the resize rule. Light to import (no TensorFlow or JAX): the build's worker processes
load it.
"""

import io
from typing import BinaryIO

import numpy as np
from PIL import Image
from PIL import ImageOps

EXIF_ORIENTATION = 0x0112


def orientation(image: Image.Image) -> int:
  """The EXIF orientation of an opened image: 1 (as stored) when absent or invalid, 2-8
  mirrored and/or rotated."""
  value = image.getexif().get(EXIF_ORIENTATION, 1)
  return value if value in range(1, 9) else 1


def decode(data: bytes) -> np.ndarray:
  """Image file bytes (any format and mode) -> [H, W, 3] uint8 RGB as shown: its EXIF
  orientation applied.

  Raises OSError (or a PIL error) when `data` cannot be fully decoded.
  """
  with Image.open(io.BytesIO(data)) as image:
    image.load()  # Decodes every pixel: truncated files raise here.
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def shown_size(file: BinaryIO) -> tuple[int, int]:
  """(height, width) of the pixels `decode` gives, from an open image file's header only
  (PIL reads no pixels here): its EXIF orientations 5-8 turn it by 90 degrees."""
  with Image.open(file) as image:
    width, height = image.size
    return (width, height) if orientation(image) >= 5 else (height, width)
