"""Test-wide settings: exact float32 matmuls and a parsed absl flag state for grain."""

import jax
from absl import flags

jax.config.update("jax_default_matmul_precision", "highest")
flags.FLAGS.mark_as_parsed()
