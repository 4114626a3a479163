"""Optimizers, learning-rate schedules and freezing by parameter-path patterns.

Freezing is declared as regular expressions over parameter paths (the NNX state path joined by
"/", e.g. `stage1/block0/conv1/kernel`), matched in full. A parameter is frozen when any
pattern of the current phase matches it and trainable otherwise; every pattern must match at
least one parameter, so a typo fails loudly instead of freezing nothing. Frozen parameters are
labelled "frozen" for `optax.partition`, which gives them `optax.set_to_zero()`: they carry no
optimizer state, and XLA removes their gradient computation and their update from the compiled
step (the step returns their buffers untouched).

Example:

  >>> rules = FreezeRules(patterns=("stem/.*", "stage[1-3]/.*"), thaw=((5, ("stage3/.*",)),))
  >>> rules.patterns_at(epoch=5)
  ('stem/.*', 'stage[1-3]/.*')
"""

import dataclasses
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

FROZEN = "frozen"
TRAINABLE = "trainable"


def path_string(keypath: Sequence) -> str:
  """The "/"-joined parameter path of a JAX key path into an `nnx.State`."""
  parts = []
  for key in keypath:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
  return "/".join(parts)


def parameter_paths(params) -> list[str]:
  """The "/"-joined paths of all leaves of `params`, in flattening order."""
  return [path_string(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def map_paths(fn: Callable[[str], object], params):
  """A tree with the structure of `params` whose leaves are `fn(path)`."""
  return jax.tree_util.tree_map_with_path(lambda kp, _: fn(path_string(kp)), params)


def matches(path: str, patterns: Sequence[str]) -> bool:
  """Whether any of the regular expressions `patterns` matches all of `path`."""
  return any(re.fullmatch(p, path) for p in patterns)


@dataclasses.dataclass(frozen=True)
class FreezeRules:
  """Which parameters are frozen, per training phase.

  Attributes:
    patterns: regular expressions of frozen parameter paths at the start of training.
    thaw: `(epoch, patterns)` pairs: from `epoch` on, parameters matching `patterns` are
      trainable even if a freeze pattern matches them (gradual thawing).
  """

  patterns: tuple[str, ...] = ()
  thaw: tuple[tuple[int, tuple[str, ...]], ...] = ()

  def thawed_at(self, epoch: int) -> tuple[str, ...]:
    """The thaw patterns in force at `epoch`."""
    return tuple(p for start, patterns in self.thaw if epoch >= start for p in patterns)

  def phase(self, epoch: int) -> int:
    """The number of thaw steps that have happened by `epoch`; changes recompile the step."""
    return sum(epoch >= start for start, _ in self.thaw)

  def labels(self, params: nnx.State, *, epoch: int = 0) -> nnx.State:
    """Labels every parameter `FROZEN` or `TRAINABLE` for `optax.partition`.

    Raises:
      ValueError: if a freeze or thaw pattern matches no parameter.
    """
    paths = parameter_paths(params)
    for pattern in (*self.patterns, *(p for _, ps in self.thaw for p in ps)):
      if not any(re.fullmatch(pattern, path) for path in paths):
        groups = sorted({path.split("/")[0] for path in paths})
        raise ValueError(
          f"freeze pattern {pattern!r} matches no parameter; parameter paths start with "
          f"{groups}, e.g. {paths[0]!r}"
        )
    thawed = self.thawed_at(epoch)

    def label(path: str) -> str:
      frozen = matches(path, self.patterns) and not matches(path, thawed)
      return FROZEN if frozen else TRAINABLE

    return map_paths(label, params)


def parameter_count(variable) -> int:
  """The parameters in an `nnx.Variable` (or array): its size less the zero padding of layers
  stored stacked (`padding` metadata, `jaxvir.models.densenet.DenseLayerStack`).

  Example:

    >>> parameter_count(nnx.Param(jnp.zeros((2, 3)), padding=1))
    5
  """
  if not isinstance(variable, nnx.Variable):
    return int(np.size(variable))
  return int(np.size(variable.get_value())) - variable.get_metadata().get("padding", 0)


def parameter_counts(params) -> list[int]:
  """`parameter_count` of each leaf of a parameter tree, in `jax.tree.leaves` order."""
  is_variable = lambda leaf: isinstance(leaf, nnx.Variable)  # noqa: E731
  return [parameter_count(leaf) for leaf in jax.tree.leaves(params, is_leaf=is_variable)]


def count_table(params, labels, *, depth: int = 1) -> str:
  """A text table of trainable and frozen parameter counts per group (path prefix)."""
  counts: dict[str, list[int]] = {}
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for (keypath, _), count, label in zip(
    leaves, parameter_counts(params), jax.tree.leaves(labels), strict=True
  ):
    group = "/".join(path_string(keypath).split("/")[:depth])
    counts.setdefault(group, [0, 0])[label == FROZEN] += count
  width = max(len("group"), *(len(g) for g in counts))
  rows = [*counts.items(), ("total", [sum(c[0] for c in counts.values()),
                                      sum(c[1] for c in counts.values())])]
  lines = [f"{'group':<{width}}  {'trainable':>12}  {'frozen':>12}"]
  lines += [f"{g:<{width}}  {t:>12,}  {f:>12,}" for g, (t, f) in rows]
  return "\n".join(lines)


def make_schedule(
  config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """The learning-rate schedule named by `config.schedule` (steps, not epochs).

  Args:
    config: the `optim` section: `learning_rate`, `schedule` ("constant", "warmup_cosine" or
      "step"), `warmup_epochs`, `step_epochs` and `step_factor`.
    steps_per_epoch: training steps in one epoch.
    total_steps: training steps in the whole run.

  Returns:
    A function from the step count to the learning rate.
  """
  base = config.learning_rate
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == "constant":
    schedule = optax.constant_schedule(base)
  elif config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, base, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1)
    )
  elif config.schedule == "step":
    schedule = optax.piecewise_constant_schedule(
      base, {int(e * steps_per_epoch): config.step_factor for e in config.step_epochs}
    )
  else:
    raise ValueError(f"optim.schedule: unknown schedule {config.schedule!r}")
  if warmup:
    # A multiplicative ramp, so that `step_epochs` stay absolute (join_schedules would shift them).
    after_warmup = schedule
    return lambda count: after_warmup(count) * jnp.minimum(1.0, count / warmup)
  return schedule


def _base_optimizer(config: ml_collections.ConfigDict, lr: optax.Schedule, decay_mask):
  if config.name == "sgd":
    return optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
  if config.name == "adam":
    return optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
  if config.name == "adamw":
    return optax.adamw(
      lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
      mask=decay_mask,
    )
  if config.name == "rmsprop":
    return rmsprop(
      lr, decay=config.rms_decay, eps=config.eps, eps_in_sqrt=config.rms_eps_in_sqrt,
      momentum=config.rms_momentum,
    )
  if config.name == "radam":
    return optax.radam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
  raise ValueError(f"optim.name: unknown optimizer {config.name!r}; one of {OPTIMIZERS}")


OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "radam")


def rmsprop(
  learning_rate: optax.ScalarOrSchedule,
  *,
  decay: float = 0.9,
  eps: float = 1e-7,
  eps_in_sqrt: bool = True,
  momentum: float = 0.0,
) -> optax.GradientTransformation:
  """RMSprop with Keras' defaults, or any of the common conventions for epsilon.

  The update is `v = decay * v + (1 - decay) * g**2` (v starts at zero, no bias correction),
  then `p -= lr * g / sqrt(v + eps)` (`eps_in_sqrt=True`: Keras 3, `tf.keras` 2.x and optax's
  default) or `p -= lr * g / (sqrt(v) + eps)` (False: standalone Keras up to 2.3, PyTorch). The
  two differ wherever `v` is not much larger than `eps`: with `eps=1e-7` and a gradient of 1e-4
  the first step is 10x shorter with epsilon inside the root. Momentum, when non-zero, is
  Keras' (and PyTorch's): `m = momentum * m + lr * g / denominator; p -= m`.

  The defaults are `keras.optimizers.RMSprop()`'s (rho 0.9, no momentum, epsilon 1e-7, not
  centered); `tests/test_optim.py` checks the updates against Keras 3 step by step.

  Args:
    learning_rate: a rate or an optax schedule.
    decay: the discount of the squared-gradient average (Keras' `rho`, PyTorch's `alpha`).
    eps: epsilon of the denominator.
    eps_in_sqrt: whether epsilon is added inside the square root.
    momentum: plain (not Nesterov) momentum; 0 keeps no momentum state.

  Returns:
    An optax transformation.

  Example:

    >>> tx = rmsprop(1e-5)  # keras.optimizers.RMSprop(learning_rate=1e-5)
  """
  return optax.rmsprop(
    learning_rate, decay=decay, eps=eps, eps_in_sqrt=eps_in_sqrt, momentum=momentum or None
  )


def make_optimizer(
  config: ml_collections.ConfigDict, *, schedule: optax.Schedule, labels
) -> optax.GradientTransformation:
  """The optimizer of `config` applied to trainable parameters only.

  Weight decay is decoupled (scaled by the learning rate, as in `optax.adamw`) for "adamw" and
  added to the gradient (L2) for the other optimizers, on parameters whose paths match none of
  `config.weight_decay_exclude`.

  Args:
    config: the `optim` section.
    schedule: the learning-rate schedule.
    labels: `FROZEN` / `TRAINABLE` per parameter, from `FreezeRules.labels`.

  Returns:
    An `optax.partition` of the optimizer (trainable) and `optax.set_to_zero()` (frozen). Its
    `update` takes the reduce-on-plateau factor as a keyword, `lr_scale` (see
    `scale_by_lr_scale`).

  Example:

    >>> tx = make_optimizer(config.optim, schedule=optax.constant_schedule(1e-3), labels=labels)
    >>> opt_state = tx.init(params)
  """
  # A callable mask, because inside `optax.partition` frozen leaves are `MaskedNode`s.
  decay_mask = lambda params: map_paths(
    lambda path: not matches(path, config.weight_decay_exclude), params
  )
  parts = []
  if config.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay and config.name != "adamw":
    parts.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
  parts.append(_base_optimizer(config, schedule, decay_mask))
  parts.append(scale_by_lr_scale())
  return optax.partition({TRAINABLE: optax.chain(*parts), FROZEN: optax.set_to_zero()}, labels)


def scale_by_lr_scale() -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by `update`'s keyword argument `lr_scale` (reduce-on-plateau's factor).

  Part of the trainable branch only, so that frozen parameters get constant zero updates:
  XLA then compiles their `param + update` to nothing, where a scale applied after
  `optax.partition` (`0 * lr_scale` cannot be folded: the scale might be infinite) made every
  step read and rewrite the frozen weights, 1.1 GB for VGG-16 with a frozen backbone.

  Returns:
    A transformation whose `update(updates, state, params, *, lr_scale=None)` scales by
    `lr_scale` (a scalar) and leaves the updates unchanged without one.

  Example:

    >>> tx = optax.chain(optax.sgd(0.1), scale_by_lr_scale())
    >>> updates, state = tx.update(grads, tx.init(params), params, lr_scale=jnp.float32(0.5))
  """

  def update(updates, state, params=None, *, lr_scale=None, **extra_args):
    del params, extra_args
    if lr_scale is not None:
      updates = jax.tree.map(lambda u: u * lr_scale, updates)
    return updates, state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)
