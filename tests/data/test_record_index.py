import pathlib
import shutil
import time

from etils.epath import gpath
from etils.epath import register as epath_register
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from maskrcnn_jax.data import build
from maskrcnn_jax.data import builder
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import record_index
import tiny_data


@pytest.fixture
def ram_scheme(monkeypatch):
  """Lets epath (hence TFDS) open ram:// as it opens gs://: through the tf.io.gfile backend."""
  monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"ram"})
  monkeypatch.setattr(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + ("ram://",))
  monkeypatch.setitem(gpath._URI_MAP_ROOT, "ram://", "/ram/")
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", gpath.backend_lib.tf_backend)
  monkeypatch.setitem(epath_register._URI_PREFIXES_TO_CLS, "ram://", gpath.PosixGPath)


def _copy_tree(src: str, dst: str):
  for folder, _, files in tf.io.gfile.walk(src):
    target = dst + folder[len(src):]
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(f"{folder}/{name}", f"{target}/{name}")


def test_reads_a_remote_data_dir(config, ram_scheme):
  # The built files (without the record index) copied to the in-memory filesystem.
  remote = ml_collections.ConfigDict(config.to_dict())
  remote.tfds_data_dir = f"ram://tfds_{time.time_ns()}"
  _copy_tree(config.tfds_data_dir, remote.tfds_data_dir)
  for cache in tf.io.gfile.glob(f"{remote.tfds_data_dir}/*/*/*/records_*.npz"):
    tf.io.gfile.remove(cache)
  for make in (lambda c: pipeline.create_eval_dataset(c, batch_size=2),
               lambda c: pipeline.create_train_dataset(c, global_batch_size=2, seed=3, start_step=2)):
    tiny_data.assert_batches_equal(tiny_data.take(make(config), 3), tiny_data.take(make(remote), 3))
  assert tf.io.gfile.glob(f"{remote.tfds_data_dir}/*/*/*/records_train.npz")  # Indexed there.


def test_builds_into_a_remote_data_dir(config, ram_scheme):
  remote = ml_collections.ConfigDict(config.to_dict())
  remote.tfds_data_dir = f"ram://tfds_{time.time_ns()}"
  built = build.prepare(remote)  # Shards committed by rename, no folder rename.
  local = build.built(config)
  for split in ("train", "validation"):
    ids = lambda b: record_index.load(b, split).image_id.tolist()
    assert ids(built) == ids(local)


def test_a_corrupt_record_fails_its_crc(config, tmp_path):
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.tfds_data_dir = str(tmp_path / "tfds")
  shutil.copytree(config.tfds_data_dir, copy.tfds_data_dir)
  built = build.prepare(copy)
  records = record_index.load(built, "validation")
  path = records.paths[records.shard[1]]
  data = bytearray(tf.io.gfile.GFile(path, "rb").read())
  data[records.offset[1] + 100] ^= 1  # One bit of the second example's JPEG.
  tf.io.gfile.GFile(path, "wb").write(bytes(data))
  with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
    tiny_data.take(pipeline.create_eval_dataset(copy, batch_size=1), 2)


def test_the_index_finds_every_record_of_several_shards(synthetic_root, tmp_path):
  built = builder.build(synthetic_root, tmp_path, class_set="stuff", mask_size=14,
                        shard_images=3)
  records = record_index.load(built, "train")
  parse = record_index.parse_fn(built.info.features)
  assert len(records.paths) == 3 and records.shard.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
  for i in range(len(records)):
    data = pathlib.Path(records.paths[records.shard[i]]).read_bytes()
    start, length = records.offset[i], records.length[i]
    assert int.from_bytes(data[start - 12:start - 4], "little") == length  # The header's.
    assert parse(data[start:start + length])["image_id"] == records.image_id[i]


def test_an_index_cache_of_other_fields_is_rebuilt(config, tmp_path):
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.tfds_data_dir = str(tmp_path / "tfds")
  shutil.copytree(config.tfds_data_dir, copy.tfds_data_dir)
  built = build.built(copy)
  record_index.load(built, "validation")
  cache = next(pathlib.Path(copy.tfds_data_dir).glob("*/*/*/records_validation.npz"))
  with np.load(cache) as z:  # An index of an earlier version: no image sizes.
    np.savez(cache, **{k: z[k] for k in z.files if k not in ("height", "width")})
  records = record_index.load(built, "validation")
  assert records.height.tolist() == records.width.tolist() == [tiny_data.S] * 5
  with np.load(cache) as z:
    assert {"height", "width"} <= set(z.files)
