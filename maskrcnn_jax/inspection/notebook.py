"""What the inspection notebooks (docs/notebooks) share: their config, output and display.

Each notebook reads the environment: `INSPECT_CONFIG` (a config file), `INSPECT_DATA_ROOT`
(overrides `data.root`), `INSPECT_WORKDIR` (the run whose model is inspected) and
`INSPECT_OUT` (where the sections write, as `--mode=inspect` writes WORKDIR/inspect/).
"""

import base64
import html
import importlib.util
import io
import json
import os
from typing import Any

from absl import logging
import ml_collections
from PIL import Image

from maskrcnn_jax.data import gcs
logging.info("TensorFlow's %s", gcs.configure())  # Before `run` loads TensorFlow.
from maskrcnn_jax.inspection import run  # pylint: disable=g-import-not-at-top

MAX_ROWS = 10


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


def workdir(default: str) -> str:
  """The run to inspect: `INSPECT_WORKDIR`, else `default`."""
  return os.environ.get("INSPECT_WORKDIR", default)


def output(default_root: str) -> run.Output:
  """Where the sections write: `INSPECT_OUT`, else `default_root`."""
  return run.Output(os.environ.get("INSPECT_OUT", default_root))


class Gallery:
  """A section's files as a notebook shows them: pictures, JSON values and the first rows
  of tables."""

  def __init__(self, files: dict[str, Any]):
    self.files = files

  def _repr_html_(self) -> str:
    parts = []
    for name, value in self.files.items():
      parts.append(f"<h4>{html.escape(name)}</h4>")
      if name.endswith(".png"):
        png = io.BytesIO()
        Image.fromarray(value).save(png, format="PNG")
        data = base64.b64encode(png.getvalue()).decode()
        parts.append(f'<img src="data:image/png;base64,{data}">')
      elif name.endswith(".json"):
        parts.append(f"<pre>{html.escape(json.dumps(value, indent=2), quote=False)}</pre>")
      elif value:
        cells = lambda row, tag: "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row)
        rows = [cells(value[0], "th")] + [cells(r.values(), "td") for r in value[:MAX_ROWS]]
        parts.append("<table>" + "".join(f"<tr>{r}</tr>" for r in rows) + "</table>"
                     f"<p>{len(value)} rows</p>")
    return "\n".join(parts)
