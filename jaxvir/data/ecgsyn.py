"""Synthetic ECG beats from McSharry et al.'s dynamical model (ECGSYN, IEEE TBME 50(3), 2003).

The model is a point moving on the unit circle of the (x, y) plane at the angular speed
omega = 2 pi / RR of the current beat, and a height z driven by Gaussian "events" at the
angles theta_i of the P, Q, R, S and T waves:

  x' = alpha x - omega y,   y' = alpha y + omega x,   alpha = 1 - sqrt(x^2 + y^2),
  z' = -sum_i a_i dtheta_i exp(-dtheta_i^2 / (2 b_i^2)) - (z - z0(t)),

with dtheta_i = (atan2(y, x) - theta_i) wrapped to [-pi, pi) and z0 the respiratory baseline.
z is the recorded lead. Equations written here from the paper, integrated with fixed-step RK4
in JAX at twice the MIT-BIH rate, vectorised over beats (one `lax.scan` over time). omega is
constant between R events, 2 pi / RR of that interval (the paper's omega = 2 pi / RR(t) with a
beat-by-beat tachogram). One change to the paper's z equation: the event term is multiplied
by omega / omega_ref (omega_ref the patient's mean speed), so that z follows the events per
radian rather than per second; with the plain term a wave's height is a b^2 / omega, and a
speed change in the middle of a wave (at an early beat's R event) leaves a step in the
baseline that decays over seconds, which is not in real recordings.

What the generator models, per beat class (`A`, `L`, `R`, and `N` for normal beats):
  - N: the paper's normal beat; L (left bundle branch block): no septal Q, a wide notched R
    (two broad R events) and a discordant, inverted T; R (right bundle branch block): an rSR'
    complex (small r, S, late broad R') and a flat or inverted T; A (atrial premature beat):
    the patient's own QRS (so an A beat of a bundle branch block patient has that block's
    wide QRS, as in MIT-BIH records 118, 207 and 232) after an ectopic P' wave of the
    patient's own shape (inverted, flat or near-normal) that comes early: the beat's RR is
    50-85 % of the patient's mean RR, and the next RR is a longer pause.
  - Patients: each has one conduction (normal, LBBB or RBBB, in turn) that its L, R and N
    beats and the neighbouring beats follow, a block of its own severity (50-100 % of the
    way from the normal to the full block template: incomplete blocks exist); a mean heart
    rate (55-100 bpm, with wave angles and widths scaled by sqrt(HR / 60) as the QT interval
    shortens), a heart-rate variability (RR standard deviation 2-10 %, so prematurity alone
    does not identify A beats), per-wave height (log-normal, sigma 0.45), width (sigma 0.3,
    the height kept) and angle offsets, an electrical axis (each event projects onto the
    lead by the cosine of the angle between its dipole and the lead, for an axis within
    +-75 degrees: a wave can shrink or flip, as between MIT-BIH patients), a noise level
    (relative to the beat's height) and a respiratory baseline wander (0.15-0.4 Hz).
  - Classes over patients: L and R beats come from the patients with that block (as in
    MIT-BIH, where a handful of records hold them); A beats from every patient, 1.5 times
    as many per normally conducting patient as per blocked one.
  - Beats: small per-beat jitter of every event, of the RR intervals and of the annotated
    beat position (+-2 samples), then white noise.
A beat's window therefore holds the preceding beat's end (its T wave, or its QRS, enters the
window when the RR interval is short), the beat itself and the start of the next.

Not modelled: overlapping waves of consecutive beats (one phase point draws one beat at a
time, so an early P' compresses the preceding T wave rather than landing on it), ventricular
and fusion beats, muscle and electrode-motion noise, a second lead.

The spreads, the block severities and the number of patients were tuned by hand, with a
logistic regression on the raw windows (random vs patient-held-out splits) and with seed-0
runs of `configs/pathnet_ecg.py:runlocal` (intra- and inter-patient test accuracy), so that a
model that saw a patient's beats does clearly better than on a new patient's, and neither is
solved; seed 1 was not looked at while tuning. The README's PathNet section has the figures.

Example:

  >>> signals, labels, patients = simulate_beats(50, symbols=("A", "L", "R"), seed=0)
  >>> signals.shape
  (150, 256)
"""

import jax
import jax.numpy as jnp
import numpy as np

SAMPLING_RATE = 360  # Hz, MIT-BIH
OVERSAMPLE = 2  # RK4 steps per output sample
# A beat owns the phases [theta_b - 2 pi, theta_b) around its R event at 0: the owner of the
# wave parameters changes at theta_b, in the diastole between the T wave and the next P wave.
OWNER_BOUNDARY = 3.3
CHUNK = 2048  # beats integrated at once (one compiled shape; bounds memory)
STEP_BUCKET = 256  # the number of RK4 steps is a multiple of this (fewer compilations)

# Events as (theta in rad, a, b in rad, dipole direction relative to the lead in degrees) in
# slots P, Q, R, R2 (LBBB notch / RBBB R'), S, T, at 60 bpm. N is the paper's Table 1; a
# wave's height is about a b^2 / omega, so the R wave is 0.3 / omega and the others scale
# from it.
TEMPLATES = {
  "N": [
    (-np.pi / 3, 1.2, 0.25, 10.0),
    (-np.pi / 12, -5.0, 0.1, -50.0),
    (0.0, 30.0, 0.1, 0.0),
    (0.2, 0.0, 0.1, 0.0),
    (np.pi / 12, -7.5, 0.1, 50.0),
    (np.pi / 2, 0.75, 0.4, 20.0),
  ],
  "L": [
    (-np.pi / 3, 1.2, 0.25, 10.0),
    (-np.pi / 12, 0.0, 0.1, -50.0),
    (-0.11, 15.0, 0.12, 0.0),
    (0.17, 17.0, 0.12, 10.0),
    (0.4, -2.0, 0.1, 50.0),
    (np.pi / 2 + 0.1, -0.6, 0.4, 20.0),
  ],
  "R": [
    (-np.pi / 3, 1.2, 0.25, 10.0),
    (-np.pi / 12, 0.0, 0.1, -50.0),
    (-0.1, 22.0, 0.085, 0.0),
    (0.22, 24.0, 0.11, 40.0),
    (0.06, -22.0, 0.085, 50.0),
    (np.pi / 2, -0.25, 0.4, 20.0),
  ],
}
SLOTS = ("P", "Q", "R", "R2", "S", "T")
CONDUCTION = {"N": "N", "L": "L", "R": "R"}  # the conduction that each non-A class needs
SUPPORTED = ("A", "L", "R", "N")
SEVERITY = (0.5, 1.0)  # range of bundle branch block severities
AMPLITUDE_SPREAD = 0.45  # log-normal sigma of each wave's amplitude across patients
WIDTH_SPREAD = 0.3  # log-normal sigma of each wave's width across patients
AXIS_RANGE = 75.0  # degrees either side of the lead
A_NORMAL_WEIGHT = 1.5  # A beats per normally conducting patient, relative to a blocked one
R_HEIGHT = 0.3  # a_R b_R^2 of the normal template: z * omega / R_HEIGHT puts R near 1


def _wrap(angle):
  return jnp.mod(angle + jnp.pi, 2 * jnp.pi) - jnp.pi


def _integrate(params, *, steps: int, dt: float, t0: float):
  """Fixed-step RK4 of the model for a chunk of beats at t0, t0 + dt, ...

  Args:
    params: per-beat float32 arrays: `theta`, `a`, `b` (beats, 3, events), the events of the
      previous, current and next beat; `switch` (beats, 2), the times at which the current
      and then the next beat's events take over; `edges` (beats, 3), the start and the
      previous and current R times; `omega` (beats, 3), the angular speeds (rad/s) from each
      edge on (0 before the start); `omega_ref` (beats,), the speed at which the events'
      heights are as given; `wander` (beats, 3), amplitude, frequency (Hz) and phase of z0.
      The current beat's R event is at t = 0 when the point starts at angle OWNER_BOUNDARY.
    steps: RK4 steps.
    dt: step in seconds.
    t0: first time; the state there is (cos, sin of OWNER_BOUNDARY, z0(t0)).

  Returns:
    z at the `steps + 1` times, shape (steps + 1, beats).
  """

  def owner_params(t):
    owner = (t >= params["switch"][:, :1]).astype(jnp.int32) + (t >= params["switch"][:, 1:])
    pick = lambda x: jnp.take_along_axis(x, owner[:, :, None], axis=1)[:, 0]  # noqa: E731
    return pick(params["theta"]), pick(params["a"]), pick(params["b"])

  def omega(t):
    # 0 before the start (the point waits in the diastole), then one speed per RR interval.
    segment = jnp.sum(t >= params["edges"], axis=1, keepdims=True)
    speeds = jnp.pad(params["omega"], ((0, 0), (1, 0)))
    return jnp.take_along_axis(speeds, segment, axis=1)[:, 0]

  def derivative(t, state):
    x, y, z = state[:, 0], state[:, 1], state[:, 2]
    alpha = 1.0 - jnp.sqrt(x * x + y * y)
    w = omega(t)
    theta, a, b = owner_params(t)
    dtheta = _wrap(jnp.arctan2(y, x)[:, None] - theta)
    # The events drive z per radian, not per second (see the module docstring).
    events = jnp.sum(a * dtheta * jnp.exp(-0.5 * (dtheta / b) ** 2), axis=1)
    force = w / params["omega_ref"] * events
    amplitude, frequency, phase = params["wander"].T
    z0 = amplitude * jnp.sin(2 * jnp.pi * frequency * t + phase)
    return jnp.stack([alpha * x - w * y, alpha * y + w * x, -force - (z - z0)], axis=1)

  def step(state, t):
    k1 = derivative(t, state)
    k2 = derivative(t + dt / 2, state + dt / 2 * k1)
    k3 = derivative(t + dt / 2, state + dt / 2 * k2)
    k4 = derivative(t + dt, state + dt * k3)
    state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return state, state[:, 2]

  start = OWNER_BOUNDARY - 2 * jnp.pi
  amplitude, frequency, phase = params["wander"].T
  z_start = amplitude * jnp.sin(2 * jnp.pi * frequency * t0 + phase)
  state = jnp.stack(
    [jnp.full_like(z_start, jnp.cos(start)), jnp.full_like(z_start, jnp.sin(start)), z_start],
    axis=1,
  )
  times = t0 + dt * jnp.arange(steps, dtype=jnp.float32)
  _, zs = jax.lax.scan(step, state, times)
  return jnp.concatenate([state[None, :, 2], zs])


integrate = jax.jit(_integrate, static_argnames=("steps", "dt"))


def _lognormal(rng, sigma, shape):
  return np.exp(sigma * rng.standard_normal(shape))


def simulate_beats(
  beats_per_class: int,
  *,
  symbols: tuple[str, ...] = ("A", "L", "R"),
  window: int = 256,
  num_patients: int = 12,
  noise: float = 0.03,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Beats of `symbols` from ECGSYN, with per-patient variability (see the module docstring).

  Args:
    beats_per_class: beats per symbol.
    symbols: beat classes, some of A, L, R, N; label i is `symbols[i]`.
    window: samples per beat at 360 Hz, the R event at sample `window // 2` (+-2 samples).
    num_patients: patients; patient p has conduction N, L, R, ... in turn (only those the
      symbols need), so it must be at least the number of conductions needed.
    noise: white-noise standard deviation relative to the beat's peak-to-peak height;
      each patient's is this times a factor in [0.3, 2].
    seed: seeds everything; the same seed gives the same beats.

  Returns:
    signals float32 (n, window) (not normalised), labels int32 (n,), patients int32 (n,),
    with n = beats_per_class * len(symbols), classes in blocks.
  """
  unknown = sorted(set(symbols) - set(SUPPORTED))
  if unknown:
    raise ValueError(
      f"data.ecg.symbols: no synthetic model for beat symbol(s) {unknown}; the synthetic ECG "
      f"has {list(SUPPORTED)} (set data.dir to MIT-BIH records for others)"
    )
  conductions = ["N"] + [s for s in ("L", "R") if s in symbols]
  if num_patients < len(conductions):
    raise ValueError(
      f"data.ecg.synthetic_patients={num_patients}: need at least {len(conductions)} "
      f"patients, one per conduction {conductions}"
    )
  rng = np.random.default_rng(seed)
  n = beats_per_class * len(symbols)
  k = len(SLOTS)
  conduction_of = np.array([p % len(conductions) for p in range(num_patients)])

  # Patients of each beat: non-A classes come from the patients with that conduction; A beats
  # from every patient, three times as often from normally conducting ones.
  labels = np.repeat(np.arange(len(symbols), dtype=np.int32), beats_per_class)
  patients = np.empty(n, np.int64)
  for index, symbol in enumerate(symbols):
    if symbol == "A":
      weights = np.where(conduction_of == 0, A_NORMAL_WEIGHT, 1.0)
    else:
      weights = (conduction_of == conductions.index(CONDUCTION[symbol])).astype(float)
    rows = labels == index
    patients[rows] = rng.choice(num_patients, int(rows.sum()), p=weights / weights.sum())
  is_a = np.array([symbols[label] == "A" for label in labels])

  # Per patient.
  heart_rate = rng.uniform(55.0, 100.0, num_patients)
  rr_mean = 60.0 / heart_rate
  hrv = rng.uniform(0.02, 0.10, num_patients)
  prematurity = rng.uniform(0.5, 0.85, num_patients)
  amplitude = _lognormal(rng, AMPLITUDE_SPREAD, (num_patients, k))
  width = _lognormal(rng, WIDTH_SPREAD, (num_patients, k))
  shift = 0.03 * rng.standard_normal((num_patients, k))
  shift[:, SLOTS.index("R")] = 0.0
  axis = np.radians(rng.uniform(-AXIS_RANGE, AXIS_RANGE, num_patients))
  ectopic_p = np.stack(
    [
      rng.uniform(0.75, 1.25, num_patients),  # angle factor: the P'R interval
      rng.uniform(-1.0, 0.8, num_patients),  # amplitude factor: inverted to near-normal
      rng.uniform(0.7, 1.4, num_patients),  # width factor
    ],
    axis=1,
  )
  patient_noise = noise * rng.uniform(0.3, 2.0, num_patients)
  wander = np.stack(
    [
      rng.uniform(0.0, 0.25, num_patients),  # amplitude, relative to R
      rng.uniform(0.15, 0.4, num_patients),  # respiratory frequency, Hz
    ],
    axis=1,
  )

  # Per beat: RR intervals (previous, own, next) and the three beats' events.
  jitter = 1.0 + hrv[patients, None] * rng.standard_normal((n, 3))
  rr = rr_mean[patients, None] * np.clip(jitter, 0.6, 1.5)
  own_premature = np.clip(prematurity[patients] + 0.04 * rng.standard_normal(n), 0.4, 0.9)
  rr[is_a, 1] = rr_mean[patients[is_a]] * own_premature[is_a]
  rr[is_a, 2] = rr_mean[patients[is_a]] * rng.uniform(1.0, 1.25, int(is_a.sum()))

  # A block's severity moves the patient's template from the normal one (0) to the full
  # block (1): incomplete blocks look like a slightly wide or notched normal QRS.
  templates = np.array([TEMPLATES[c] for c in conductions], np.float64)  # (c, k, 4)
  severity = np.where(conduction_of == 0, 0.0, rng.uniform(*SEVERITY, num_patients))
  normal = templates[0][None]
  patient_template = normal + severity[:, None, None] * (templates[conduction_of] - normal)
  base = patient_template[patients]  # (n, k, 4)
  scale = np.sqrt(heart_rate[patients] / 60.0)[:, None]  # shorter QT at higher rates
  events = np.empty((n, 3, k, 3))
  for owner in range(3):
    theta = base[..., 0] * scale + shift[patients]
    # A wave's height is a b^2 / omega_ref: divide a by the width factor squared so that
    # width and height vary independently.
    lead = np.cos(axis[patients, None] + np.radians(base[..., 3]))
    a = base[..., 1] * amplitude[patients] * lead / width[patients] ** 2
    b = base[..., 2] * scale * width[patients]
    if owner == 1:  # the beat itself: its class's morphology, then beat-to-beat jitter
      p = SLOTS.index("P")
      ectopic = ectopic_p[patients[is_a]]
      theta[is_a, p] *= ectopic[:, 0]
      a[is_a, p] *= ectopic[:, 1]
      b[is_a, p] *= ectopic[:, 2]
      theta = theta + 0.01 * rng.standard_normal((n, k)) * (np.arange(k) != SLOTS.index("R"))
      a = a * _lognormal(rng, 0.05, (n, k))
      b = b * _lognormal(rng, 0.03, (n, k))
    events[:, owner] = np.stack([theta, a, b], axis=-1)

  omega = 2 * np.pi / rr  # (n, 3)
  fraction = OWNER_BOUNDARY / (2 * np.pi)
  previous_r = -rr[:, 1]
  start = previous_r - rr[:, 0] * (1 - fraction)
  switch = np.stack([previous_r + rr[:, 1] * fraction, rr[:, 2] * fraction], axis=1)
  edges = np.stack([start, previous_r, np.zeros(n)], axis=1)
  # Heights scale as 1 / omega: divide by the patient's mean omega so that R is near 1.
  gain = 2 * np.pi / rr_mean[patients] / R_HEIGHT
  beat_wander = np.stack(
    [
      wander[patients, 0] / gain,
      wander[patients, 1],
      rng.uniform(0.0, 2 * np.pi, n),
    ],
    axis=1,
  )
  offset = rng.integers(-2, 3, n)

  dt = 1.0 / (SAMPLING_RATE * OVERSAMPLE)
  # Steps before the R event, rounded up so that most calls share one compiled integration.
  pre = -(-int(np.ceil(-start.min() / dt) + 1) // STEP_BUCKET) * STEP_BUCKET
  post = (window - window // 2 + 2) * OVERSAMPLE + 1
  t0 = -pre * dt
  params = {
    "theta": events[..., 0],
    "a": events[..., 1],
    "b": events[..., 2],
    "switch": switch,
    "edges": edges,
    "omega": omega,
    "omega_ref": 2 * np.pi / rr_mean[patients],
    "wander": beat_wander,
  }
  signals = np.empty((n, window), np.float32)
  columns = pre + OVERSAMPLE * (np.arange(window) - window // 2)
  size = -(-n // -(-n // CHUNK))  # equal chunks of at most CHUNK beats: one compiled shape
  for begin in range(0, n, size):
    chunk = {
      key: np.asarray(_pad_rows(value[begin : begin + size], size), np.float32)
      for key, value in params.items()
    }
    z = np.asarray(integrate(chunk, steps=pre + post, dt=dt, t0=t0))  # (steps + 1, size)
    rows = np.arange(begin, min(begin + size, n))
    index = columns[None, :] + OVERSAMPLE * offset[rows, None]
    signals[rows] = z[index, (rows - begin)[:, None]]
  signals *= gain[:, None].astype(np.float32)
  # Noise relative to the beat's own height: a beat that projects weakly onto the lead is
  # recorded with a higher gain, not buried in noise.
  height = np.ptp(signals, axis=1, keepdims=True)
  noise_std = patient_noise[patients, None] * height
  signals += (noise_std * rng.standard_normal((n, window))).astype(np.float32)
  return signals, labels, patients.astype(np.int32)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  """Pads the first axis to `rows` with copies of the first row (a valid beat)."""
  missing = rows - len(array)
  if missing == 0:
    return array
  return np.concatenate([array, np.repeat(array[:1], missing, axis=0)])
