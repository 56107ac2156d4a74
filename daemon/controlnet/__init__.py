"""ControlNet as A1111's ControlNet extension (sd-webui-controlnet) does it: pure parts.

The unit's keys (:mod:`.units`), its infotext entry (:mod:`.infotext`), the control image's
geometry (:mod:`.images`) and the model-free preprocessors (:mod:`.modules` names them and
their sliders, :mod:`.preprocessors` runs them; :mod:`.annotators` says which weight files
the other preprocessors need and where they are found; :mod:`.union` which kind of control
image a ControlNet Union is told a unit's is; :mod:`.masked` crops control images for "only
masked" inpainting and marks the mask for the inpaint preprocessors). Nothing here loads a
model or imports
torch:
the call step that adds a ControlNet's residuals to the UNet is
:mod:`daemon.engines.controlnet_step`, above the model layer.

The rules, as the README states them:

* a unit's defaults are the extension's (``Crop and Resize``, ``Balanced``, weight 1.0,
  guidance 0.0 → 1.0); ``processor_res`` / ``threshold_a`` / ``threshold_b`` outside their
  preprocessor's slider (``-1`` by default) take the slider's default, as the extension's
  bounds check does for an enabled unit;
* guidance start and end count over the model calls that run (img2img skips the start of
  the schedule): call ``i`` of ``n`` is controlled when ``i/n ≥ start`` and ``(i+1)/n ≤ end``,
  diffusers' rule, so ``guidance_end: 0`` controls nothing;
* control modes scale the residuals as the extension's ``hook.py``: Balanced ``weight`` on
  every residual; "My prompt is more important" ``weight · 0.825^(12-i)``; "ControlNet is
  more important" the same scales on the conditional rows only (the unconditional rows get
  none, so CFG pushes towards the control);
* several units add their scaled residuals.
"""
