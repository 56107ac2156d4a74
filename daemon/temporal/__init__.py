"""Temporal consistency for clips and videos, as pure numpy/Pillow functions (no torch, no state).

The flow of the package, frame by frame: ``flow.measure_motion`` measures how the current
*source* frame came from the previous one (OpenCV DIS both ways, with a reliability mask from
forward–backward consistency); ``flow.warp_image`` and ``flow.blend_init`` bring the previous
result onto the current frame and blend it into the init image where the flow is trusted
(``flow_init``); ``noise.warped_noise`` moves the previous frame's initial noise along the same
flow and keeps it exactly Gaussian (``warped_noise``); ``flow.is_cut`` says when the flow explains
too little of the frame to blend anything. ``metrics`` scores a clip (warp error, distance from
the input) and ``known_motion`` renders clips whose motion is known exactly, for the tests and
``make bench-temporal``. ``keys`` holds the profile keys (``temporal:`` and its options) and
``infotext`` writes them into a frame's parameters and reads them back.
"""
