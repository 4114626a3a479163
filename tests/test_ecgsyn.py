"""Tests of jaxvir.data.ecgsyn: the RK4 integration against scipy, morphologies, seeding."""

import numpy as np
import pytest
from scipy import integrate as scipy_integrate

from jaxvir.data import ecg, ecgsyn


def _one_beat_params(template: str, rr=(1.0, 0.6, 1.2)):
  """The events of `template` for the previous, current and next beat, RR intervals `rr`."""
  events = np.asarray(ecgsyn.TEMPLATES[template])[:, :3]
  rr = np.asarray(rr)
  fraction = ecgsyn.OWNER_BOUNDARY / (2 * np.pi)
  start = -rr[1] - rr[0] * (1 - fraction)
  params = {
    "theta": np.repeat(events[None, None, :, 0], 3, 1),
    "a": np.repeat(events[None, None, :, 1], 3, 1),
    "b": np.repeat(events[None, None, :, 2], 3, 1),
    "switch": np.array([[-rr[1] + rr[1] * fraction, rr[2] * fraction]]),
    "edges": np.array([[start, -rr[1], 0.0]]),
    "omega": 2 * np.pi / rr[None],
    "omega_ref": np.array([2 * np.pi]),
    "wander": np.array([[0.004, 0.25, 1.0]]),
  }
  return {key: value.astype(np.float32) for key, value in params.items()}, start


def _scipy_z(params, times):
  """The same equations, written out for one beat, by scipy's adaptive DOP853."""
  p = {key: value[0].astype(np.float64) for key, value in params.items()}

  def derivative(t, state):
    x, y, z = state
    speed = np.concatenate([[0.0], p["omega"]])[np.sum(t >= p["edges"])]
    owner = int(np.sum(t >= p["switch"]))
    dtheta = np.mod(np.arctan2(y, x) - p["theta"][owner] + np.pi, 2 * np.pi) - np.pi
    events = np.sum(p["a"][owner] * dtheta * np.exp(-0.5 * (dtheta / p["b"][owner]) ** 2))
    amplitude, frequency, phase = p["wander"]
    z0 = amplitude * np.sin(2 * np.pi * frequency * t + phase)
    alpha = 1 - np.hypot(x, y)
    return [
      alpha * x - speed * y,
      alpha * y + speed * x,
      -speed / p["omega_ref"] * events - (z - z0),
    ]

  amplitude, frequency, phase = p["wander"]
  start = [
    np.cos(ecgsyn.OWNER_BOUNDARY),
    np.sin(ecgsyn.OWNER_BOUNDARY),
    amplitude * np.sin(2 * np.pi * frequency * times[0] + phase),
  ]
  # Integrate piecewise between the switching times, where the right-hand side jumps.
  breaks = np.unique(np.concatenate([p["edges"], p["switch"]]))
  breaks = breaks[(breaks > times[0]) & (breaks < times[-1])]
  bounds = np.concatenate([[times[0]], breaks, [times[-1]]])
  z = np.empty_like(times)
  for low, high in zip(bounds[:-1], bounds[1:], strict=True):
    inside = (times >= low) & (times <= high)
    solution = scipy_integrate.solve_ivp(
      derivative, (low, high), start, method="DOP853", rtol=1e-8, atol=1e-10,
      t_eval=times[inside], max_step=2e-3, dense_output=True,
    )  # fmt: skip
    z[inside] = solution.y[2]
    start = solution.sol(high)
  return z


@pytest.mark.parametrize("template", ["N", "R"])
def test_rk4_matches_scipy_on_a_premature_rhythm(template):
  params, start = _one_beat_params(template)
  dt = 1.0 / 720
  steps = int(np.ceil((0.4 - start) / dt))
  t0 = start - 0.05
  z = np.asarray(ecgsyn.integrate(params, steps=steps, dt=dt, t0=t0))[:, 0]
  times = t0 + dt * np.arange(steps + 1)
  want = _scipy_z(params, times)
  height = np.abs(want).max()
  # The R event's height is a b^2 / omega_ref = 0.3 / (2 pi), less what the leak -(z - z0)
  # took during the waves before it.
  if template == "N":
    assert 0.8 < want[np.argmin(np.abs(times))] / (0.3 / (2 * np.pi)) < 1.02
  # RK4 is first order across the speed jumps: a jump inside a step can shift the phase by
  # part of a step (1.4 ms), which moves a steep QRS flank by up to about 1.5 % of R.
  np.testing.assert_allclose(z, want, atol=0.02 * height)
  assert np.sqrt(np.mean((z - want) ** 2)) < 0.003 * height


def _qrs_width(signals: np.ndarray) -> np.ndarray:
  """Per beat, the run of samples above half height around the largest deflection near R."""
  widths = []
  for signal in signals:
    centre = np.abs(signal[98:158] - np.median(signal))
    peak = int(np.argmax(centre))
    above = centre > centre[peak] / 2
    left = peak - np.argmin(above[peak::-1]) if not above[: peak + 1].all() else 0
    right = peak + np.argmin(above[peak:]) if not above[peak:].all() else len(centre)
    widths.append(right - left)
  return np.array(widths)


def test_beats_are_seeded_and_follow_their_class_and_patient():
  a = ecgsyn.simulate_beats(60, num_patients=6, noise=0.0, seed=3)
  b = ecgsyn.simulate_beats(60, num_patients=6, noise=0.0, seed=3)
  c = ecgsyn.simulate_beats(60, num_patients=6, noise=0.0, seed=4)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.allclose(a[0], c[0])
  signals, labels, patients = a
  assert signals.shape == (180, 256) and signals.dtype == np.float32
  assert np.isfinite(signals).all()
  assert np.bincount(labels).tolist() == [60, 60, 60]
  # Conductions N, L, R in turn: L beats from patients 1 and 4, R beats from 2 and 5, A from all.
  assert set(patients[labels == 1].tolist()) <= {1, 4}
  assert set(patients[labels == 2].tolist()) <= {2, 5}
  assert len(set(patients[labels == 0].tolist())) >= 4
  # A beat of a normally conducting patient has a narrower QRS than a left bundle branch block.
  width = _qrs_width(signals)
  a_normal = (labels == 0) & np.isin(patients, [0, 3])
  assert np.median(width[labels == 1]) > 1.3 * np.median(width[a_normal])


def test_right_bundle_branch_block_template_is_rsr():
  params, start = _one_beat_params("R", rr=(1.0, 1.0, 1.0))
  dt = 1.0 / 720
  steps = int(np.ceil((0.3 - start) / dt))
  z = np.asarray(ecgsyn.integrate(params, steps=steps, dt=dt, t0=start))[:, 0]
  times = start + dt * np.arange(steps + 1)
  qrs = z[(times > -0.06) & (times < 0.1)]
  peaks = np.flatnonzero((qrs[1:-1] > qrs[:-2]) & (qrs[1:-1] > qrs[2:])) + 1
  assert len(peaks) == 2 and qrs[peaks[1]] > qrs[peaks[0]] > 0  # r, then the taller R'
  assert qrs[peaks[0] : peaks[1]].min() < 0  # the S between them


def test_synthesize_beats_wraps_the_model_with_patients_as_groups():
  beats = ecg.synthesize_beats(20, num_patients=3, seed=1)
  assert beats.source == "synthetic" and beats.signals.shape == (60, 256)
  assert beats.signals.min() >= 0 and beats.signals.max() <= 1
  assert set(beats.groups.tolist()) <= {"synth00", "synth01", "synth02"}
  assert beats.class_names == (
    "atrial_premature",
    "left_bundle_branch_block",
    "right_bundle_branch_block",
  )


def test_errors_name_the_field():
  with pytest.raises(ValueError, match="data.ecg.symbols.*'V'"):
    ecgsyn.simulate_beats(2, symbols=("A", "V"))
  with pytest.raises(ValueError, match="data.ecg.synthetic_patients=2"):
    ecgsyn.simulate_beats(2, num_patients=2)
