"""A clip's render state: one home, one lifetime.

A clip is a sub-folder of frames in a profile's inbox, or a video file. Its frames share what
makes a video steady, kept here and nowhere else (:mod:`.state`): one base seed, and its key
frame (the first finished frame: the colours every later frame is corrected towards, and for
a video the prompts its ``{interrogate}``/``{tags}`` filled in; key-frame attention comes
next). Its progress line and pace are :mod:`.progress`. The frames themselves are painted by
the one frame pipeline, :mod:`daemon.queue.frames`.
"""
