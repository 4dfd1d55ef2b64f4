"""Training. Its error lives here, light to import: main.py catches it before TF loads."""


class DivergenceError(FloatingPointError):
  """`train.max_nonfinite_steps` steps in a row were non-finite; the checkpoints are complete."""
