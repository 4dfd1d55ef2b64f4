"""The data build: the TFRecords of a data config, made once and found again.

`prepare` writes the synthetic set when the config asks for it, builds the TFRecords
(`builder`) and their record index (`record_index`); the input pipelines find them with
`built`. `annotation_files` names the ground truth evaluation scores against.
"""

import contextlib
import os
import threading
import time

from absl import logging
from etils import epath
import jax
import ml_collections

from maskrcnn_jax import distributed
from maskrcnn_jax.data import builder as builder_lib
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import DataError
from maskrcnn_jax.data import record_index
from maskrcnn_jax.data import synthetic

LOG_EVERY_S = 60  # Seconds between the progress lines of every process while the data is built.


def data_dir(data_config: ml_collections.ConfigDict) -> str:
  """Where the TFRecords live: `data.tfds_data_dir` (any epath: local, gs://), or ROOT/tfds."""
  return data_config.tfds_data_dir or str(epath.Path(data_config.root) / "tfds")


def _builder(data_config) -> builder_lib.MaskrcnnCocoStuff:
  return builder_lib.make_builder(data_dir(data_config), class_set=data_config.class_set,
                                  mask_size=data_config.mask_size)


def built(data_config: ml_collections.ConfigDict) -> builder_lib.MaskrcnnCocoStuff:
  """The builder of `data_config`'s TFRecords; raises unless `prepare` has built them."""
  builder = _builder(data_config)
  if not builder.is_prepared():
    raise FileNotFoundError(f"no TFRecords at {builder.data_dir}: call prepare(config.data) first")
  return builder


def _needs_synthetic(root: epath.Path) -> bool:
  return not root.exists() or not any(p.name != "tfds" for p in root.iterdir())


def build_workers(data_config: ml_collections.ConfigDict) -> int:
  """`data.build_workers`, 0 meaning one per core this process may run on."""
  return data_config.build_workers or len(os.sched_getaffinity(0))


def prepare(data_config: ml_collections.ConfigDict, *,
            wait_s: float = 24 * 3600) -> builder_lib.MaskrcnnCocoStuff:
  """Makes sure the TFRecords of `data_config` exist; returns their (built) builder.

  Writes the synthetic set to ROOT first when `data.synthetic.enabled` and ROOT is missing or
  empty. Idempotent: fast when already built; a killed build resumes. With several
  processes, process 0 builds (`data.build_workers` processes decode the images) and the
  others wait for it on the coordination service for up to `wait_s`; every process logs a
  line each `LOG_EVERY_S`. The data directory must be shared. Raises DataError (one line)
  for bad annotation files, in every process. Warns about images holding more than
  `data.max_instances` instances (training keeps the largest; batches count the rest in
  `num_truncated`).
  """
  if not data_config.root:
    raise ValueError("config.data.root is empty: set it to the COCO-Stuff root")
  builder = _builder(data_config)
  key = f"maskrcnn_jax/data/{builder.data_dir}"
  if jax.process_index() > 0:
    error = distributed.wait_for(key, what=f"process 0's data build of {builder.data_dir}",
                                 timeout_s=wait_s, log_every_s=LOG_EVERY_S)
    if error:
      raise DataError(f"the data build on process 0 failed: {error}")
    return _builder(data_config)
  try:
    with _heartbeat(f"building the data of {builder.data_dir}"):
      builder = _build(data_config)
  except Exception as e:
    if jax.process_count() > 1:
      distributed.publish(key, str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise
  if jax.process_count() > 1:
    distributed.publish(key, "")
  return builder


@contextlib.contextmanager
def _heartbeat(what: str):
  """Logs a line every `LOG_EVERY_S` while the body runs."""
  stop, start = threading.Event(), time.monotonic()
  def beat():
    while not stop.wait(LOG_EVERY_S):
      logging.info("Process 0: %s (%.1f min)", what, (time.monotonic() - start) / 60)
  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


def _build(data_config: ml_collections.ConfigDict) -> builder_lib.MaskrcnnCocoStuff:
  root = epath.Path(data_config.root)
  syn = data_config.synthetic
  if syn.enabled and _needs_synthetic(root):
    logging.info("Writing the synthetic set to %s", root)
    synthetic.write_synthetic(root, num_train=syn.num_train, num_val=syn.num_val,
                              image_size=syn.image_size, seed=syn.seed,
                              num_stuff_classes=syn.num_stuff_classes)
  if not root.is_dir():
    raise DataError(f"data root {root} does not exist (and data.synthetic is off)")
  builder = builder_lib.build(root, data_dir(data_config), class_set=data_config.class_set,
                              mask_size=data_config.mask_size,
                              num_workers=build_workers(data_config))
  for split in builder.info.splits:
    _warn_over_cap(record_index.load(builder, split), split, data_config.max_instances)
  return builder


def _warn_over_cap(records: record_index.Records, split: str, max_instances: int) -> None:
  over = records.num_instances > max_instances
  if over.any():
    logging.warning(
        "%s: %d of %d images hold more than data.max_instances = %d instances (up to %d); "
        "the smallest past the cap are dropped and counted in num_truncated (first ids: %s)",
        split, over.sum(), len(records), max_instances, records.num_instances.max(),
        records.image_id[over][:10].tolist())


def annotation_files(data_config: ml_collections.ConfigDict, split: str) -> list[str]:
  """The GT JSON files evaluation scores against: stuff, plus instances with things."""
  class_set = categories.get_class_set(data_config.class_set)
  return [str(coco_reader.annotation_path(data_config.root, split, kind))
          for kind in coco_reader.annotation_kinds(class_set)]
