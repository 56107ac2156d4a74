"""``keep_alpha``: the input's transparency carried onto its result (A1111 drops it).

The model still paints the input flattened on white (the VAE has no alpha channel); the
input's alpha plane is resized exactly as the image was and put on the painted result. Pure
Pillow, so it is tested without torch.
"""

from __future__ import annotations

from PIL import Image

from daemon.a1111.imaging import fill_placement, resize_image
from daemon.a1111.sizes import ResizeMode


def input_alpha(image: Image.Image) -> Image.Image | None:
    """The alpha plane (mode L) of a decoded input, or None when it has none.

    ``load_image`` gives RGBA for every input with transparency (RGBA, LA, a palette or
    greyscale with tRNS), so only RGBA is asked about."""
    return image.getchannel("A") if image.mode == "RGBA" else None


def result_alpha(alpha: Image.Image, mode: ResizeMode, size: tuple[int, int]) -> Image.Image:
    """`alpha` (at the input's size) resized the way the input was painted at `size`.

    A result at the input's own size ("only masked" inpainting pastes back into the whole
    picture) takes the alpha as it is. Latent upscale stretches the picture to the size, so
    its alpha is just resized. Resize and Fill's bands hold no input: they get alpha 0.
    """
    width, height = size
    if alpha.size == size:
        return alpha.copy()
    if mode is ResizeMode.LATENT_UPSCALE:
        return resize_image(alpha, ResizeMode.JUST_RESIZE, width, height)
    if mode is not ResizeMode.RESIZE_AND_FILL:
        return resize_image(alpha, mode, width, height)
    x, y, src_w, src_h = fill_placement(alpha.size, width, height)
    canvas = Image.new("L", size, 0)
    canvas.paste(alpha.resize((src_w, src_h), Image.Resampling.LANCZOS), (x, y))
    return canvas


def with_alpha(image: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """`image` with `alpha` as its alpha channel (RGBA); unchanged without one."""
    if alpha is None:
        return image
    painted = image.convert("RGBA")
    painted.putalpha(alpha)
    return painted
