"""Two-stage FLIG training: `loop.train(config, workdir)` (imported on use)."""


class TrainingDiverged(RuntimeError):
  """NaN or Inf in the loss, gradients or parameters; the message names the stage, the step and
  the last good checkpoint."""


class Preempted(RuntimeError):
  """SIGTERM stopped the run (at a step boundary, after saving there, when training)."""
