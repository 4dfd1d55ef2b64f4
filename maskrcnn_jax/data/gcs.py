"""TensorFlow's `gs://` reads sized to one record: set before TensorFlow loads.

Training and evaluation read each record alone, at its byte offset (`record_index.read_record`:
one read of the record's framed size). TF's GCS client does not fetch just that: with its
block cache off (the default), each file it opens keeps a read-ahead buffer of
GCS_READ_CACHE_BLOCK_SIZE_MB (64 MiB by default) and fills it with one ranged request from
the first byte read, so a 160 KB record costs up to 64 MiB of transfer (and 64 MiB of memory
per record in flight). With a block size of 0 every read is one ranged request of exactly
the bytes asked for: a record costs the 1-byte read of TF's seek and its framed size
(docs/benchmarks.md, "Remote reads"). TF reads these variables once, when it loads, so
`configure` must run before the first `import tensorflow`.
"""

import os
import sys
from typing import MutableMapping

# Variables that size TF's GCS reads; a user who sets any of them keeps all of TF's behaviour.
USER_VARIABLES = ("GCS_READ_CACHE_BLOCK_SIZE_MB", "GCS_READ_CACHE_MAX_SIZE_MB",
                  "GCS_READAHEAD_BUFFER_SIZE_BYTES")
BLOCK_SIZE = "GCS_READ_CACHE_BLOCK_SIZE_MB"


def configure(environ: MutableMapping[str, str] | None = None) -> str:
  """Sets GCS_READ_CACHE_BLOCK_SIZE_MB=0 in `environ` (default os.environ) unless a
  GCS read variable is set already; returns a line saying what TF's gs:// reads will do."""
  environ = os.environ if environ is None else environ
  user = {k: environ[k] for k in USER_VARIABLES if k in environ}
  if user:
    return f"gs:// reads as set in the environment ({user})"
  environ[BLOCK_SIZE] = "0"
  line = f"gs:// reads fetch exactly the bytes read ({BLOCK_SIZE}=0)"
  if environ is os.environ and "tensorflow" in sys.modules:
    line += ", from the next process: TensorFlow was loaded before"
  return line
