"""Two-stage FLIG training: `loop.train(config, workdir)` (imported on use)."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the message names the stage, the step and the last good checkpoint."""
