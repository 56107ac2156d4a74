"""When a unit acts, and how strongly on each residual: pure numbers.

* Guidance start and end count over the model calls that run (img2img skips the start of
  the schedule), diffusers' rule: call ``i`` of ``n`` is controlled when ``i/n ≥ start`` and
  ``(i+1)/n ≤ end``. So ``guidance_end: 0`` controls no call at all. (The extension's own
  rule lags a step and still controls the first calls at ``guidance_end: 0``.)
* The control modes scale the residuals as the extension's ``hook.py``: Balanced gives every
  residual the unit's weight; the other two give residual ``i`` ``weight · 0.825^(12-i)``
  (the extension's 13 scales for SD 1.x, of which SDXL takes the first 10: the middle block's
  residual comes last); "ControlNet is more important" also leaves the unconditional rows
  without control.
"""

from __future__ import annotations

from daemon.controlnet.units import ControlMode

SOFT_BASE = 0.825
_EPSILON = 1e-9  # i/n against a start or end written in decimals (0.3 is not 3/10 in binary)


def is_active(call: int, calls: int, start: float, end: float) -> bool:
    """Whether model call `call` (0-based) of `calls` is controlled."""
    if calls <= 0:
        return False
    return call / calls >= start - _EPSILON and (call + 1) / calls <= end + _EPSILON


def control_scales(mode: ControlMode, weight: float, residuals: int) -> list[float]:
    """The scale of each of a net's `residuals` (its down residuals, then the middle one)."""
    if mode is ControlMode.BALANCED:
        return [weight] * residuals
    return [weight * SOFT_BASE ** float(12 - i) for i in range(residuals)]


def conditional_only(mode: ControlMode) -> bool:
    """Whether the unit's residuals go to the conditional rows only (CFG then pushes
    towards the control: the extension's ``cfg_injection``)."""
    return mode is ControlMode.CONTROL
