"""What main.py calls before training: validation of data and stages, the resume guard and
the config history."""

import json
import logging

from etils import epath
import pytest

from configs import default
from configs import tiny
from maskrcnn_jax import run
from maskrcnn_jax import validation


def saved_workdir(tmp_path, config, *, checkpoint=True):
  """A workdir as a run of `config` leaves it: config.json and (optionally) a checkpoint."""
  run.write_config(config, str(tmp_path))
  if checkpoint:
    (tmp_path / "checkpoints" / "2" / "state").mkdir(parents=True)
  return str(tmp_path)


def test_config_history_is_kept(tmp_path):
  config = default.get_config()
  run.write_config(config, str(tmp_path))
  config.model.depth = 50
  run.write_config(config, str(tmp_path))
  history = sorted((tmp_path / "configs").iterdir())
  assert len(history) == 2 and all(p.name.startswith("config-") for p in history)
  depths = {json.loads(p.read_text())["model"]["depth"] for p in history}
  assert depths == {101, 50}
  assert json.loads((tmp_path / "config.json").read_text())["model"]["depth"] == 50


@pytest.mark.parametrize("change, keys", [
    (lambda c: setattr(c.train, "global_batch_size", 4), ["train.global_batch_size (2 -> 4)"]),
    (lambda c: setattr(c, "seed", 1), ["seed (0 -> 1)"]),
    (lambda c: setattr(c.data, "image_size", 512), ["data.image_size (1024 -> 512)"]),
    (lambda c: setattr(c.data, "class_set", "stuff_no_other"), ["data.class_set"]),
    (lambda c: setattr(c.data, "root", "/other"), ["data.root ('/data' -> '/other')"]),
    (lambda c: setattr(c.train.stages[1], "steps", 5), ["train.stages[1].steps (60000 -> 5)"]),
    (lambda c: setattr(c.train.stages[2], "trainable", "all"), ["train.stages[2].trainable"]),
    (lambda c: setattr(c.train.stages[0], "name", "h"), ["train.stages[0].name"]),
    (lambda c: c.train.stages.pop(), ["train.stages[2].name ('3+' -> absent)", "train.stages[2].steps"]),
])
def test_resume_refuses_a_changed_data_order_or_schedule(tmp_path, change, keys):
  config = default.get_config()
  config.data.root = "/data"
  workdir = saved_workdir(tmp_path, config)
  change(config)
  with pytest.raises(validation.ConfigError) as e:
    run.check_resume(config, workdir)
  message = str(e.value)
  assert "\n" not in message and "allow_config_change=True" in message
  assert all(k in message for k in keys), message


def test_resume_allows_other_changes_and_the_override(tmp_path, caplog):
  config = default.get_config()
  workdir = saved_workdir(tmp_path, config)
  config.train.stages[1].lr = 0.001
  config.data.eval_batch_size = 8
  config.eval.num_pictures = 0
  with caplog.at_level(logging.INFO):
    run.check_resume(config, workdir)  # Learning rates and evaluation may change.
  assert "train.stages[1].lr (0.0002 -> 0.001)" in caplog.text
  config.seed = 7
  config.train.allow_config_change = True
  with caplog.at_level(logging.WARNING):
    run.check_resume(config, workdir)
  assert "allow_config_change=True despite" in caplog.text and "seed (0 -> 7)" in caplog.text


def test_a_new_run_or_one_without_checkpoints_is_not_a_resume(tmp_path):
  config = default.get_config()
  run.check_resume(config, str(tmp_path / "new"))
  workdir = saved_workdir(tmp_path / "crashed", config, checkpoint=False)
  config.seed = 3
  run.check_resume(config, workdir)


def test_missing_data_root_is_one_line(tmp_path):
  config = tiny.get_config()
  config.data.root = str(tmp_path / "nowhere")
  config.data.synthetic.enabled = False
  with pytest.raises(validation.ConfigError, match=r"config.data.root = '.*nowhere': no such "):
    run.validate(config, "eval")


def test_trainable_matching_nothing_is_rejected_before_compile():
  config = tiny.get_config()
  config.train.stages[1] = default.stage("4+", ("backbone/res4/.*", "roi_head/.*"), steps=2,
                                         lr=0.1)
  run.validate(config, "eval")  # Only training reads the stages.
  with pytest.raises(validation.ConfigError,
                     match=r"config.train.stages\[1\].trainable = .*'roi_head/\.\*' matches no"):
    run.validate(config, "train")  # jax.eval_shape of the init: no compile, no backend.
