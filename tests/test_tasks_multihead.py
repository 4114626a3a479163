"""Multi-head decision rules and loss: exact values on hand-written probability vectors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvir import tasks
from jaxvir.tasks import CPE_HEADS, Head, HeadSpec

# Final classes of CPE_HEADS, by index.
IAV, IBV, MDCK, PARA1, PARA2, PARA3, MK2, CVB1, RD = range(9)
NONE = 9
# Jitted once per shape: eager mode would compile each small op separately.
fusion = jax.jit(tasks.fusion_predict, static_argnames=("spec", "none_answer"))
mux = jax.jit(tasks.mux_predict, static_argnames="spec")


def cpe_probs(mdck, mk2, rd):
  """Concatenated head probabilities: MDCK [IAV, IBV, MDCK, none], MK2 [P1, P2, P3, MK2, none],
  RD [CVB1, RD, none]."""
  assert len(mdck) == 4 and len(mk2) == 5 and len(rd) == 3
  return jnp.array([*mdck, *mk2, *rd], jnp.float32)


# (probabilities, fusion answer, fusion answer with none_answer)
FUSION_CASES = {
  # k=0: no head says none; the most probable of all nine non-none classes (MK2-Para2 at .5).
  "k0": (
    cpe_probs([0.45, 0.1, 0.1, 0.35], [0.0, 0.5, 0.1, 0.1, 0.3], [0.45, 0.2, 0.35]),
    PARA2,
    PARA2,
  ),
  # k=1: MDCK says none, its IAV (.45) is ignored; MK2's Para3 .35 against RD's CVB1 .4.
  "k1": (
    cpe_probs([0.45, 0.0, 0.0, 0.55], [0.1, 0.1, 0.35, 0.15, 0.3], [0.4, 0.3, 0.3]),
    CVB1,
    CVB1,
  ),
  # k=2: only MK2 is not none; its own argmax, though RD's RD (.4) is larger.
  "k2": (cpe_probs([0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.2, 0.35, 0.25], [0.1, 0.4, 0.5]), MK2, MK2),
  # k=3: every head says none; the most probable non-none class overall (MDCK-IBV .3), or none.
  "k3": (cpe_probs([0.1, 0.3, 0.1, 0.5], [0.1, 0.1, 0.1, 0.1, 0.6], [0.2, 0.2, 0.6]), IBV, NONE),
}


@pytest.mark.parametrize("case", sorted(FUSION_CASES))
def test_fusion_every_k(case):
  probs, want, want_none = FUSION_CASES[case]
  assert int(fusion(probs, spec=CPE_HEADS)) == want
  assert int(fusion(probs, spec=CPE_HEADS, none_answer=True)) == want_none


def test_fusion_ties_first_index_wins():
  # A class tying with its head's none counts as not none: MDCK is k=0 here, MK2 and RD none.
  probs = cpe_probs([0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0])
  assert int(fusion(probs, spec=CPE_HEADS, none_answer=True)) == IBV
  # A tie between two heads' classes goes to the earlier head (MDCK before RD).
  probs = cpe_probs([0.6, 0.0, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0, 1.0], [0.6, 0.0, 0.4])
  assert int(fusion(probs, spec=CPE_HEADS)) == IAV
  # Within a head, the first of two tied classes.
  probs = cpe_probs([0.0, 0.0, 0.0, 1.0], [0.0, 0.4, 0.4, 0.0, 0.2], [0.0, 0.0, 1.0])
  assert int(fusion(probs, spec=CPE_HEADS)) == PARA2


def test_fusion_jit_vmap_batch():
  probs = jnp.stack([case[0] for case in FUSION_CASES.values()])
  want = [case[1] for case in FUSION_CASES.values()]
  want_none = [case[2] for case in FUSION_CASES.values()]
  assert fusion(probs, spec=CPE_HEADS).tolist() == want
  assert fusion(probs, spec=CPE_HEADS, none_answer=True).tolist() == want_none
  one = jax.jit(jax.vmap(lambda p: tasks.fusion_predict(p, spec=CPE_HEADS)))
  assert one(probs).tolist() == want
  assert fusion(probs, spec=CPE_HEADS).dtype == jnp.int32


def test_mux_picks_the_known_head_and_ignores_none():
  probs = cpe_probs([0.3, 0.1, 0.2, 0.4], [0.2, 0.1, 0.1, 0.05, 0.55], [0.1, 0.6, 0.3])
  cell_lines = jnp.array([0, 1, 2])
  batch = jnp.stack([probs] * 3)
  assert mux(batch, cell_lines, spec=CPE_HEADS).tolist() == [IAV, PARA1, RD]
  # Ties within the head: the first class.
  tied = cpe_probs([0.0, 0.0, 0.0, 1.0], [0.1, 0.4, 0.4, 0.1, 0.0], [0.5, 0.5, 0.0])
  assert mux(jnp.stack([tied] * 2), jnp.array([1, 2]), spec=CPE_HEADS).tolist() == [
    PARA2,
    CVB1,
  ]


def test_demux_routes_each_image_to_its_cell_line_model():
  mdck = jnp.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]])
  mk2 = jnp.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
  rd = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
  got = jax.jit(tasks.demux_predict, static_argnames="spec")(
    (mdck, mk2, rd), jnp.array([0, 1, 2]), spec=CPE_HEADS
  )
  assert got.tolist() == [IBV, MK2, CVB1]  # the last a tie: first wins
  assert tasks.demux_predict((mdck, mk2, rd), jnp.array([1, 1, 1]), spec=CPE_HEADS).tolist() == [
    PARA1,
    MK2,
    PARA1,
  ]
  with pytest.raises(ValueError, match=r"models with \(3, 4\) classes"):
    tasks.demux_predict((mdck, mk2), jnp.array([0, 1, 2]), spec=CPE_HEADS)


def test_head_labels_own_head_class_others_none():
  got = tasks.head_labels(jnp.arange(9), spec=CPE_HEADS)
  want = [
    [0, 4, 2], [1, 4, 2], [2, 4, 2],
    [3, 0, 2], [3, 1, 2], [3, 2, 2], [3, 3, 2],
    [3, 4, 0], [3, 4, 1],
  ]  # fmt: skip
  assert got.tolist() == want
  assert CPE_HEADS.class_heads.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
  assert CPE_HEADS.class_outputs.tolist() == [0, 1, 2, 4, 5, 6, 7, 9, 10]
  assert CPE_HEADS.num_outputs == 12


def test_multihead_loss_is_the_weighted_sum_of_head_cross_entropies():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 12)).astype(np.float32)
  labels = np.array([0, 3, 8, 6, 1])
  mask = np.array([True, True, True, True, False])
  weights = (1.0, 0.5, 2.0)

  def loss_fn(x):
    return tasks.multihead_loss(x, labels, spec=CPE_HEADS, head_weights=weights, mask=mask)

  (loss, sums), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(logits)
  # The reference in numpy: per-head log-softmax at each head's own label.
  targets = np.array([[0, 4, 2], [3, 0, 2], [3, 4, 1], [3, 3, 2], [1, 4, 2]])
  per_example = np.zeros(5)
  probs = []
  for h, (start, stop) in enumerate(CPE_HEADS.head_slices):
    block = logits[:, start:stop].astype(np.float64)
    log_probs = block - block.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    per_example -= weights[h] * log_probs[np.arange(5), targets[:, h]]
    probs.append(np.exp(log_probs))
  np.testing.assert_allclose(loss, per_example[:4].mean(), rtol=1e-5)
  np.testing.assert_allclose(sums["loss"], per_example[:4].sum(), rtol=1e-5)
  predicted = fusion(np.concatenate(probs, 1).astype(np.float32), spec=CPE_HEADS)
  assert float(sums["correct"]) == float(np.sum((predicted == labels)[:4]))
  assert float(sums["count"]) == 4.0
  assert np.all(np.isfinite(grads)) and np.all(grads[4] == 0)  # padding has no gradient


def test_generic_spec_two_heads():
  spec = HeadSpec((Head("a", ("a1", "a2")), Head("b", ("b1",))))
  assert spec.class_names == ("a1", "a2", "b1") and spec.num_outputs == 5
  # Head a says a2, head b says none (k=1): a2.
  probs = jnp.array([0.1, 0.6, 0.3, 0.2, 0.8])
  assert int(fusion(probs, spec=spec)) == 1
  # Both none: best non-none is b1 (.4), or none = index 3.
  probs = jnp.array([0.1, 0.2, 0.7, 0.4, 0.6])
  assert int(fusion(probs, spec=spec)) == 2
  assert int(fusion(probs, spec=spec, none_answer=True)) == 3
  assert int(mux(probs, jnp.array(0), spec=spec)) == 1


def test_bad_specs_and_outputs_say_what_is_wrong():
  with pytest.raises(ValueError, match="unique"):
    HeadSpec((Head("a", ("x",)), Head("b", ("x",))))
  with pytest.raises(ValueError, match="none_name"):
    HeadSpec((Head("a", ("none",)),))
  with pytest.raises(ValueError, match="has 9 outputs per example but the heads"):
    tasks.fusion_predict(jnp.zeros((2, 9)), spec=CPE_HEADS)
  with pytest.raises(ValueError, match="head_weights has 2 entries"):
    tasks.multihead_loss(jnp.zeros((1, 12)), jnp.array([0]), spec=CPE_HEADS, head_weights=(1, 1))
