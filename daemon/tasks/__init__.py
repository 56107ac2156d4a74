"""Kinds of work, one module each (img2img, sketch, inpaint, inpaint_sketch, interrogate,
tags), found through the one table in :mod:`daemon.tasks.registry`."""
