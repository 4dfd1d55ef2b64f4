"""COCO-Stuff input: the TFRecord build, its record index and the input pipelines."""


class DataError(ValueError):
  """Input data that cannot be built: one line naming the file and what is wrong."""
