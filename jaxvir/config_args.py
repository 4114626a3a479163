"""Config arguments: the `ARG` of `--config configs/NAME.py:ARG`, parsed one way for every config.

`ARG` is a comma-separated list of flags (`runlocal`) and `key=value` options (`fold=3`), in
any order: `configs/pathnet_ecg.py:runlocal,inter_patient`, or `:vgg16,ft2,fold=3` for a config
that declares those. A config declares what it accepts; anything else is rejected in one
sentence listing what is known.

  >>> args = parse("runlocal,fold=3", flags=("runlocal", "paper"), options={"fold": 0})
  >>> args.runlocal, args.paper, args.fold
  (True, False, 3)
"""

import types
from collections.abc import Iterable, Mapping

Value = bool | int | float | str

_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class Args(types.SimpleNamespace):
  """Parsed config arguments, one read-only attribute each: `args.runlocal`, `vars(args)`."""

  __slots__ = ()

  def __setattr__(self, name: str, value) -> None:
    raise AttributeError(f"config arguments are read-only (tried to set {name!r})")

  def __delattr__(self, name: str) -> None:
    raise AttributeError(f"config arguments are read-only (tried to delete {name!r})")


def parse(
  arg: str | None,
  *,
  flags: Iterable[str] = (),
  options: Mapping[str, Value] | None = None,
) -> Args:
  """Parses a config argument into flags (bool) and options (typed like their defaults).

  Items are separated by commas; surrounding spaces and empty items are ignored, so `None`, `""`
  and `" , "` all give the defaults. A flag is named alone (`runlocal`); an option is given as
  `key=value`, where the value is read as the type of the option's default (`true`/`false`,
  `1`/`0` or `yes`/`no` for a bool). Values cannot hold commas.

  Args:
    arg: the text after the first `:` of `--config`, or None when there is none.
    flags: the names of the config's on/off arguments; each is False unless given.
    options: the config's `key=value` arguments with their defaults (bool, int, float or str).

  Returns:
    an `Args` with one attribute per flag and option.

  Raises:
    ValueError: an unknown argument (listing the known ones), an argument given twice, a flag
      given a value, an option without one, or a value that does not read as its option's type.

  Example:
    >>> parse("paper", flags=("paper", "runlocal"))
    Args(paper=True, runlocal=False)
    >>> parse("epochs=5", options={"epochs": 100, "lr": 1e-3})
    Args(epochs=5, lr=0.001)
  """
  flags = tuple(flags)
  options = dict(options or {})
  _check_declaration(flags, options)
  values: dict[str, Value] = {name: False for name in flags} | options
  given = set()
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    name, equals, text = (part.strip() for part in item.partition("="))
    if name not in values:
      raise ValueError(f"unknown config argument {item!r}; {_known(flags, options)}")
    if name in given:
      raise ValueError(f"config argument {name!r} is given twice in {arg!r}")
    given.add(name)
    if name in flags:
      if equals:
        raise ValueError(f"config argument {name!r} is a flag: write {name}, not {item}")
      values[name] = True
    elif not equals:
      default = options[name]
      raise ValueError(f"config argument {name!r} needs a value, e.g. {name}={_show(default)}")
    else:
      values[name] = _read(name, text, type(options[name]))
  return Args(**values)


def _check_declaration(flags: tuple[str, ...], options: dict[str, Value]) -> None:
  """A config's own declaration errors (its author's, not its user's)."""
  for name in (*flags, *options):
    if not name.isidentifier():
      raise ValueError(f"config argument name {name!r} is not a Python identifier")
  if len(set(flags)) != len(flags) or set(flags) & set(options):
    raise ValueError(f"config argument names repeat: flags {flags}, options {sorted(options)}")
  for name, default in options.items():
    if type(default) not in _TYPE_NAMES:
      raise TypeError(f"config option {name!r}: default {default!r} is not a bool, int, "
                      "float or str")  # fmt: skip


def _read(name: str, text: str, kind: type) -> Value:
  try:
    if kind is bool:
      return _BOOLEANS[text.lower()]
    return kind(text)
  except (KeyError, ValueError):
    raise ValueError(
      f"config argument {name}={text!r}: the value must be {_TYPE_NAMES[kind]}"
    ) from None


def _show(value: Value) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def _known(flags: tuple[str, ...], options: dict[str, Value]) -> str:
  known = [*flags]
  for name, default in options.items():
    known.append(f"{name}=<{type(default).__name__}> (default {_show(default)})")
  return f"known arguments: {', '.join(known)}" if known else "this config takes no arguments"
