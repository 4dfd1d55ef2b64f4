"""What the inspection notebooks (docs/notebooks) share: their config and their pictures.

Each notebook reads the environment: `INSPECT_CONFIG` (a config file), `INSPECT_DATA_ROOT`
(overrides `data.root`) and `INSPECT_OUT` (where pictures are saved).
"""

import importlib.util
import os
import pathlib
from typing import Callable

import ml_collections
import numpy as np
from PIL import Image


def load_config(default_path: str) -> ml_collections.ConfigDict:
  """`get_config()` of `INSPECT_CONFIG` (else `default_path`), `INSPECT_DATA_ROOT` applied."""
  path = os.environ.get("INSPECT_CONFIG", default_path)
  spec = importlib.util.spec_from_file_location("inspected_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if os.environ.get("INSPECT_DATA_ROOT"):
    config.data.root = os.environ["INSPECT_DATA_ROOT"]
  return config


def picture_saver(default_dir: str) -> Callable[[str, np.ndarray], Image.Image]:
  """`show(name, image)`: saves NAME.png to `INSPECT_OUT` (else `default_dir`) and returns
  the picture, which a notebook displays."""
  out = pathlib.Path(os.environ.get("INSPECT_OUT", default_dir))

  def show(name: str, image: np.ndarray) -> Image.Image:
    out.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image)
    picture.save(out / f"{name}.png")
    return picture

  return show
