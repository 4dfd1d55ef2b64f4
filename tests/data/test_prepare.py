"""prepare's command line: the config's data defaults, with the flags' values over them."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_command_line_builds_the_config_with_the_flags(synthetic_root, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "maskrcnn_jax.data.prepare", "--root", str(synthetic_root),
       "--data_dir", str(tmp_path), "--mask_size", "16"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "train: 8 images" in result.stdout and "validation: 5 images" in result.stdout
  assert (tmp_path / "maskrcnn_coco_stuff" / "stuff_m16").is_dir()  # class_set from the config.
