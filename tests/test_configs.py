"""Every config builds with each documented argument, loaded as `scripts/train.py` loads it."""

import doctest
import itertools
import pathlib
import re

import pytest
from absl import flags
from ml_collections import config_flags

from jaxvir import config as config_lib
from jaxvir import config_args, tem_experiments
from jaxvir.pathnet import experiments as pathnet_experiments
from jaxvir.twinvae import experiments as twinvae_experiments

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ml_collections loads config files with importlib's deprecated load_module.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
# The arguments each config accepts, in its declared order (the README's table).
ARGUMENTS = {
  "classify_folder": ("runlocal",),
  "cpe_demux": ("runlocal", "small_data", "flip_first"),
  "cpe_multitask": ("runlocal", "mux", "small_data", "flip_first"),
  "cpe_single": ("runlocal", "small_data", "flip_first"),
  "cxr_vgg": ("vgg19", "ft0", "runlocal"),
  "pathnet_ecg": ("runlocal", "inter_patient", "ds1_ds2", "aami", "paper"),
  "pathnet_joint": ("runlocal", "inter_patient"),
  "pathnet_pneumonia": ("runlocal",),
  "tem_densenet": ("runlocal", "tta"),
  "tem_small": ("runlocal", "tta"),
  "twinvae_bf": ("paper", "runlocal"),
  "twinvae_pc": ("paper", "runlocal"),
  "twinvae_transfer": ("to_pc", "paper", "runlocal"),
}
# Configs whose arguments are not all combinable (one network, one degree): everything declared.
DECLARED = {
  "cxr_vgg": "vgg16, vgg19, ft0, ft1, ft2, ft3, ft4, ft5, runlocal, fold=<int> (default 0), "
  "weights=<str> (default )",
}

# Arguments that exclude each other (two test protocols): loading both is an error.
EXCLUSIVE = {"pathnet_ecg": ("inter_patient", "ds1_ds2")}

# The `key=value` arguments, as the unknown-argument error lists them after the flags.
OPTIONS = {}


def load(spec: str):
  """`--config=configs/{spec}` parsed by a flag defined as `scripts/train.py` defines it."""
  flag_values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
  flag_values(["train.py", f"--config={ROOT / 'configs' / spec}"])
  return config.value


def every_combination():
  for name, names in ARGUMENTS.items():
    for k in range(len(names) + 1):
      for combo in itertools.combinations(names, k):
        excluded = EXCLUSIVE.get(name)
        if not (excluded and set(excluded) <= set(combo)):
          yield name, ",".join(combo)


@pytest.mark.parametrize("name", sorted(EXCLUSIVE))
def test_exclusive_arguments_are_refused(name):
  with pytest.raises(Exception, match=" and ".join(EXCLUSIVE[name])):
    load(f"{name}.py:{','.join(EXCLUSIVE[name])}")


def test_every_config_is_listed_and_loads_no_other_by_path():
  paths = sorted((ROOT / "configs").glob("*.py"))
  assert [path.stem for path in paths] == sorted(ARGUMENTS)
  for path in paths:
    assert not re.search(r"importlib|exec_module|spec_from_file", path.read_text()), path


@pytest.mark.parametrize(("name", "arg"), list(every_combination()))
def test_config_builds_and_validates(name, arg):
  config = load(f"{name}.py:{arg}" if arg else f"{name}.py")
  if config.data.layout != "class" and config.data.dir is None:  # the user's folder: required
    config.data.dir = "/data"
  config_lib.validate(config)
  assert config.is_locked
  if "runlocal" in arg:
    assert config.checkpoint.keep == 1 and config.train.epochs <= 8


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_docstring_documents_every_argument_and_its_commands_build(name):
  docstring = (ROOT / "configs" / f"{name}.py").read_text().split('"""')[1]
  for argument in ARGUMENTS[name]:
    assert f"`{argument}`" in docstring or f"`:{argument}`" in docstring, argument
  commands = re.findall(rf"configs/{name}\.py(:\S+)?", docstring)
  assert commands
  for arg in commands:
    load(f"{name}.py{arg}")


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_unknown_argument_is_one_line_listing_the_known_ones(name):
  with pytest.raises(flags.IllegalFlagValueError) as error:
    load(f"{name}.py:runlocal,no_such_argument")
  # ml_collections puts the traceback before the error; its last line is the one to print.
  assert str(error.value).splitlines()[-1] == (
    "ValueError: unknown config argument 'no_such_argument'; known arguments: "
    + DECLARED.get(name, ", ".join(ARGUMENTS[name]) + OPTIONS.get(name, ""))
  )


def test_twinvae_bright_field_has_the_papers_bright_field_sizes():
  # Table 1: Syn-BF-L-Tr 2,469 and Syn-BF-L-Te 514 (Syn-PC: 3,152 and 792).
  for spec in ("twinvae_bf.py", "twinvae_bf.py:paper", "twinvae_transfer.py:paper"):
    section = load(spec).twinvae
    assert section.modality == "bright_field", spec
    assert (section.num_synthetic_train, section.num_synthetic_test) == (2469, 514), spec
    assert section.natural_label_fraction == 0.075, spec
  for spec in ("twinvae_pc.py", "twinvae_pc.py:paper", "twinvae_transfer.py:to_pc,paper"):
    section = load(spec).twinvae
    assert section.modality == "phase_contrast", spec
    assert (section.num_synthetic_train, section.num_synthetic_test) == (3152, 792), spec
    assert section.natural_label_fraction == 0.062, spec


def test_twinvae_paper_settings():
  config = load("twinvae_bf.py:paper")
  assert (config.optim.name, config.optim.learning_rate, config.optim.weight_decay) == (
    "radam",
    1.3e-4,
    1e-5,
  )
  assert (config.twinvae.reconstruction, config.twinvae.rec_decay) == ("bce", 3e-5)
  assert (config.twinvae.variant, config.train.batch_size) == ("paper", 64)
  config = load("twinvae_pc.py:paper")
  assert (config.optim.name, config.twinvae.reconstruction, config.train.batch_size) == (
    "adam",
    "mse",
    128,
  )
  # Quick runs keep the paper's choices but not its sizes, in either order of the arguments.
  quick = load("twinvae_bf.py:runlocal,paper")
  assert quick.to_dict() == load("twinvae_bf.py:paper,runlocal").to_dict()
  assert (quick.optim.name, quick.twinvae.reconstruction) == ("radam", "bce")
  assert (quick.twinvae.num_synthetic_train, quick.train.batch_size, quick.train.epochs) == (
    128,
    8,
    2,
  )
  transfer = load("twinvae_transfer.py")
  assert (transfer.twinvae.transfer, transfer.train.epochs) == ("simultaneous", 500)
  assert load("twinvae_transfer.py:runlocal").train.epochs == 2


def test_pathnet_ecg_combines_runlocal_and_inter_patient():
  config = load("pathnet_ecg.py:runlocal,inter_patient")
  assert config.to_dict() == load("pathnet_ecg.py:inter_patient,runlocal").to_dict()
  assert config.data.split_by == "group"
  assert tuple(config.data.test_groups) == ("111", "209", "212")
  assert tuple(config.data.image_size) == (32, 32)
  assert (config.pathnet.population_size, config.data.ecg.max_beats_per_class) == (16, 200)
  assert load("pathnet_ecg.py:runlocal").data.split_by == "example"
  assert load("pathnet_ecg.py:inter_patient").data.ecg.max_beats_per_class == 0


def test_pathnet_joint_pairs_ecg_with_chest_xrays():
  config = load("pathnet_joint.py:runlocal,inter_patient")
  assert (config.pathnet.mode, tuple(config.pathnet.task_names)) == ("joint", ("ecg", "pneumonia"))
  assert (config.data.name, config.data.split_by) == ("mitdb_beats", "group")
  second = config.pathnet.second_data
  assert (second.name, second.split_by, "ecg" in second) == ("folder", "example", False)
  assert tuple(second.image_size) == tuple(config.data.image_size) == (32, 32)
  assert pathlib.Path(second.dir).name == "cxr3"
  assert pathlib.Path(config.data.dir).name == "mitdb"


@pytest.mark.parametrize(
  "module", [config_args, pathnet_experiments, twinvae_experiments, tem_experiments]
)
def test_docstring_examples(module):
  assert doctest.testmod(module).failed == 0


def test_twinvae_paper_follows_the_paper_where_the_authors_code_differs():
  paper, reference = load("twinvae_pc.py:paper").twinvae, load("twinvae_pc.py").twinvae
  assert (paper.crop_area, paper.ratio) == (0.81, 1.0)  # 115 of 128 px per side; 1:1 pre-training
  assert (reference.crop_area, reference.ratio) == (0.9, 2.0)
  assert not paper.frozen_outer_trains_regressor and reference.frozen_outer_trains_regressor
  assert not paper.sample_at_eval and reference.sample_at_eval  # the authors' code samples
  assert reference.select_on == "val"
  assert load("twinvae_transfer.py:paper").twinvae.ratio == 2.0  # 2:1 is the transfer ratio
