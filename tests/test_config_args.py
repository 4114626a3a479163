"""Tests of the config argument parser (jaxvir.config_args)."""

import re

import pytest

from jaxvir import config_args

FLAGS = ("runlocal", "inter_patient")
OPTIONS = {"fold": 0, "lr": 1e-3, "model": "vgg16", "augment": True}


def parse(arg):
  return config_args.parse(arg, flags=FLAGS, options=OPTIONS)


def test_no_argument_gives_the_defaults():
  expected = {"runlocal": False, "inter_patient": False, **OPTIONS}
  for arg in (None, "", " , ,"):
    assert vars(parse(arg)) == expected


def test_flags_and_options_combine_in_any_order():
  args = parse("inter_patient, fold=3,runlocal,lr=2.5e-4,model=vgg19,augment=no")
  assert vars(args) == {
    "runlocal": True, "inter_patient": True, "fold": 3, "lr": 2.5e-4, "model": "vgg19",
    "augment": False,
  }  # fmt: skip
  assert type(args.fold) is int and type(args.lr) is float and type(args.augment) is bool
  assert repr(config_args.parse("fold=2", options={"fold": 0})) == "Args(fold=2)"


@pytest.mark.parametrize(
  ("text", "value"), [("true", True), ("1", True), ("Yes", True), ("FALSE", False), ("0", False)]
)
def test_booleans(text, value):
  assert parse(f"augment={text}").augment is value


def test_a_value_may_hold_equals_signs():
  assert parse("model=a=b").model == "a=b"


def test_unknown_argument_lists_the_known_ones_in_one_line():
  with pytest.raises(ValueError) as error:
    parse("runlocal,inter_patiant")
  assert str(error.value) == (
    "unknown config argument 'inter_patiant'; known arguments: runlocal, inter_patient, "
    "fold=<int> (default 0), lr=<float> (default 0.001), model=<str> (default vgg16), "
    "augment=<bool> (default true)"
  )
  with pytest.raises(ValueError, match=r"^unknown config argument 'x=1'; this config takes no "):
    config_args.parse("x=1")


@pytest.mark.parametrize(
  ("arg", "message"),
  [
    ("fold=three", "config argument fold='three': the value must be an integer"),
    ("fold=3.0", "config argument fold='3.0': the value must be an integer"),
    ("lr=fast", "config argument lr='fast': the value must be a number"),
    ("augment=maybe", "config argument augment='maybe': the value must be true/false"),
    ("fold", "config argument 'fold' needs a value, e.g. fold=0"),
    ("fold=", "config argument fold='': the value must be an integer"),
    ("runlocal=true", "config argument 'runlocal' is a flag: write runlocal, not runlocal=true"),
    ("runlocal,runlocal", "config argument 'runlocal' is given twice in 'runlocal,runlocal'"),
    ("fold=1,fold=2", "config argument 'fold' is given twice in 'fold=1,fold=2'"),
  ],
)
def test_user_errors_name_the_argument(arg, message):
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    parse(arg)


def test_args_are_read_only():
  args = parse("runlocal")
  with pytest.raises(AttributeError, match="read-only"):
    args.runlocal = False
  with pytest.raises(AttributeError):
    args.paper  # noqa: B018 - not declared


@pytest.mark.parametrize(
  ("flags", "options", "error"),
  [
    (("run-local",), {}, ValueError),
    (("runlocal", "runlocal"), {}, ValueError),
    (("fold",), {"fold": 0}, ValueError),
    ((), {"fold": None}, TypeError),
    ((), {"sizes": (1, 2)}, TypeError),
  ],
)
def test_declaration_errors(flags, options, error):
  with pytest.raises(error):
    config_args.parse(None, flags=flags, options=options)
