import time

import ml_collections
import pytest

from maskrcnn_jax.data import build
from maskrcnn_jax.data import DataError
import tiny_data


def test_prepare_writes_synthetic_once(tmp_path):
  config = tiny_data.config(tmp_path / "data")
  config.synthetic.update(enabled=True, num_train=3, num_val=2, image_size=32)
  built = build.prepare(config)
  assert built.info.splits["train"].num_examples == 3
  stamp = (tmp_path / "data" / "annotations" / "stuff_train2017.json").stat().st_mtime_ns
  start = time.time()
  build.prepare(config)
  assert time.time() - start < 1.0
  assert (tmp_path / "data" / "annotations" / "stuff_train2017.json").stat().st_mtime_ns == stamp
  assert build.data_dir(config) == str(tmp_path / "data" / "tfds")


def test_prepare_without_data_raises(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    build.prepare(tiny_data.config(tmp_path / "missing"))


def test_annotation_files(config):
  root = config.root
  assert build.annotation_files(config, "validation") == [
      f"{root}/annotations/stuff_val2017.json"]
  both = ml_collections.ConfigDict(dict(root=root, class_set="things_and_stuff"))
  assert build.annotation_files(both, "train") == [
      f"{root}/annotations/stuff_train2017.json", f"{root}/annotations/instances_train2017.json"]
