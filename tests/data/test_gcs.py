import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bench import object_store
from maskrcnn_jax.data import gcs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_configure_sets_a_zero_block_size_unless_the_user_sized_reads():
  env = {"PATH": "/bin"}
  assert "exactly the bytes read" in gcs.configure(env)
  assert env == {"PATH": "/bin", "GCS_READ_CACHE_BLOCK_SIZE_MB": "0"}
  for name in gcs.USER_VARIABLES:
    env = {name: "16"}
    assert "as set in the environment" in gcs.configure(env)
    assert env == {name: "16"}


# A new process (TF reads its GCS settings when it loads): main's settings, then one record
# read by the pipeline's reader from gs://.
_READ = """
import json, sys
import main
print(main.GCS_READS)
import tensorflow as tf
from maskrcnn_jax.data import record_index
where = tf.data.Dataset.from_tensors(
    (sys.argv[1], tf.constant(int(sys.argv[2]), tf.int64), tf.constant(int(sys.argv[3]), tf.int64)))
record = next(iter(where.flat_map(record_index.read_record))).numpy()
print(json.dumps(len(record)))
"""


@pytest.mark.slow  # A new process: main's imports.
def test_one_record_read_from_gcs_fetches_its_own_bytes(tmp_path):
  rng = np.random.default_rng(0)
  records = [rng.bytes(n) for n in (300_000, 200_000, 300_000)]  # 0.8 MB: more than one read.
  (tmp_path / "bucket").mkdir()
  with tf.io.TFRecordWriter(str(tmp_path / "bucket" / "shard")) as writer:
    for r in records:
      writer.write(r)
  offset = 12 + len(records[0]) + 16  # The second record's data.
  with object_store.Store(tmp_path) as store:
    env = dict(object_store.clean_env(), **store.client_env(), TF_CPP_MIN_LOG_LEVEL="3")
    for name in gcs.USER_VARIABLES:
      env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", _READ, "gs://bucket/shard", str(offset), str(len(records[1]))],
        cwd=ROOT, env=env, capture_output=True, text=True)
    assert not out.returncode, out.stderr[-2000:]
    out = out.stdout.splitlines()
    requests = store.take()
  assert out[0] == "gs:// reads fetch exactly the bytes read (GCS_READ_CACHE_BLOCK_SIZE_MB=0)"
  assert json.loads(out[-1]) == len(records[1])
  # TF's seek to the record reads its one byte before (a check for the end of the file), then
  # the record: header, data, CRC. With TF's defaults the first read would fill 64 MiB.
  assert [(r.kind, r.start, r.bytes) for r in requests] == [
      ("media", offset - 13, 1), ("media", offset - 12, len(records[1]) + 16)]
