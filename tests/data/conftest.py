"""Fixtures of the data tests: a tiny synthetic COCO-Stuff root, its TFRecords, and the shared
real samples."""

import pathlib

import pytest

from maskrcnn_jax.data import build
from maskrcnn_jax.data import synthetic
import tiny_data

SAMPLES = pathlib.Path(__file__).parents[2].parent / "shared" / "coco_samples"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> pathlib.Path:
  """8 train + 5 val images of 64², written once per session; tests must not modify it."""
  root = tmp_path_factory.mktemp("synthetic")
  synthetic.write_synthetic(root, num_train=8, num_val=5, image_size=64, seed=3)
  return root


@pytest.fixture(scope="session")
def config(synthetic_root, tmp_path_factory):
  """`tiny_data.config` of the synthetic root, built once per session; tests must not modify
  it."""
  config = tiny_data.config(synthetic_root)
  config.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  build.prepare(config)
  return config


@pytest.fixture
def samples() -> pathlib.Path:
  if not SAMPLES.is_dir():
    pytest.skip(f"{SAMPLES} (real COCO samples) not present")
  return SAMPLES
