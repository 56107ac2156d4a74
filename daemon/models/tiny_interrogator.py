"""The built-in tiny interrogator: a random BLIP and CLIP, saved as real transformers folders.

``builtin:tiny-interrogator`` (see :mod:`daemon.models.builtin`) is generated with this, from a
fixed seed and without any download, so that
:class:`~daemon.engines.interrogate_clip.ClipInterrogator` and the code around it run the real
transformers loading and inference path on a CPU in well under a second. Its words mean nothing,
but they are deterministic."""

from __future__ import annotations

import json
from pathlib import Path

_TINY_SEED = 0
_TINY_IMAGE = 32
_TINY_PATCH = 8
_TINY_HIDDEN = 32
_LAYERS = {
    "hidden_size": _TINY_HIDDEN,
    "intermediate_size": 2 * _TINY_HIDDEN,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
}
"""The toy size of every transformer in it: text and vision, BLIP and CLIP."""
_CLIP_MAX_TOKENS = 77
_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_CLIP_MERGES = (
    ("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r"), ("o", "n"), ("r", "e"),
    ("a", "t"), ("e", "n"), ("o", "r"), ("in", "g</w>"), ("an", "d</w>"), ("o", "f</w>"),
    ("a", "r"), ("s", "t"),
)  # fmt: skip
"""A few merges in the real format, so the tokenizer is a real BPE one (most text stays bytes)."""
_BLIP_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
"""BERT's special tokens plus BLIP's ``[DEC]``, its decoder's start (bos) token."""
_BLIP_WORDS = """
a an the of and with in on at by under over near behind beside between through into from
some two three many few one small large big tiny huge tall short long wide old new young
ancient modern bright dark light shadow red orange yellow green blue purple pink brown black
white gray golden silver colorful pale vivid soft hard warm cold wet dry calm wild quiet
happy sad smiling sitting standing walking running flying swimming sleeping holding looking
wearing playing riding eating reading painting drawing man woman girl boy child baby person
people family friend couple crowd soldier king queen knight wizard robot alien monster dragon
cat dog horse bird fish cow sheep lion tiger bear wolf fox rabbit deer owl eagle butterfly
tree trees flower flowers grass leaf leaves forest jungle garden field meadow park mountain
mountains hill valley cliff rock stone desert beach sand ocean sea lake river waterfall
island sky cloud clouds sun moon star stars rain snow fog storm lightning fire smoke ice
water wave waves city town village street road bridge building house castle tower church
temple room kitchen bedroom window door wall floor roof table chair bed sofa lamp book
picture photo photograph painting portrait landscape sketch poster cartoon anime statue
car truck bus train boat ship plane bicycle motorcycle rocket space planet earth night day
morning evening sunset sunrise winter summer spring autumn hat dress shirt coat glasses
umbrella bag sword shield crown flag clock phone computer camera guitar piano cup bottle
plate food bread cake apple fruit pizza coffee tea face eyes hair hands head smile mirror
background foreground close view top side front back center corner edge middle pattern
texture detailed blurry sharp simple abstract realistic cinematic dramatic beautiful cute
scary strange empty full busy
"""


def _clip_vocab() -> dict[str, int]:
    """CLIP's vocabulary layout: 256 byte symbols, the same with ``</w>``, merges, specials."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in _CLIP_MERGES]
    tokens += [_CLIP_BOS, _CLIP_EOS]
    if len(set(tokens)) != len(tokens):
        raise AssertionError("the tiny CLIP vocabulary has a duplicate entry")
    return {token: i for i, token in enumerate(tokens)}


def _build_tiny_clip(folder: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = _clip_vocab()
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = ["#version: 0.2", *(f"{a} {b}" for a, b in _CLIP_MERGES)]
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(
        folder, model_max_length=_CLIP_MAX_TOKENS, pad_token=_CLIP_EOS
    )
    config = CLIPConfig(
        text_config={
            **_LAYERS,
            "vocab_size": len(vocab),
            "max_position_embeddings": _CLIP_MAX_TOKENS,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,  # pooled output: the first eos token
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**_LAYERS, "image_size": _TINY_IMAGE, "patch_size": _TINY_PATCH},
        projection_dim=_TINY_HIDDEN,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(_TINY_SEED)
        model = CLIPModel(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": _TINY_IMAGE},
        crop_size={"height": _TINY_IMAGE, "width": _TINY_IMAGE},
    )
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _build_tiny_blip(folder: Path) -> None:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    words = list(dict.fromkeys(_BLIP_WORDS.split()))
    vocab = [*_BLIP_SPECIALS, *words]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(folder, bos_token="[DEC]", model_max_length=512)
    ids = {token: vocab.index(token) for token in _BLIP_SPECIALS}
    config = BlipConfig(
        text_config={
            **_LAYERS,
            "vocab_size": len(vocab),
            "max_position_embeddings": 512,  # as the real model: any caption length fits
            "encoder_hidden_size": _TINY_HIDDEN,
            # BLIP starts captions with [DEC] and ends them with [SEP]; all inside the vocab.
            "bos_token_id": ids["[DEC]"],
            "pad_token_id": ids["[PAD]"],
            "eos_token_id": ids["[SEP]"],
            "sep_token_id": ids["[SEP]"],
        },
        vision_config={**_LAYERS, "image_size": _TINY_IMAGE, "patch_size": _TINY_PATCH},
        projection_dim=_TINY_HIDDEN,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = BlipForConditionalGeneration(config)
        # A random decoder would also emit [PAD], [CLS] … (dropped when decoding, so captions
        # came out shorter than asked) and would end at random. Bias it like a trained one:
        # words only, and it ends the caption as soon as min_length allows.
        with torch.no_grad():
            bias = model.text_decoder.cls.predictions.bias
            for token, index in ids.items():
                bias[index] = 20.0 if token == "[SEP]" else -20.0
    image_processor = BlipImageProcessorPil(size={"height": _TINY_IMAGE, "width": _TINY_IMAGE})
    model.save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def build_tiny_interrogator(folder: Path) -> None:
    """Write a tiny random BLIP (``folder/blip``) and CLIP (``folder/clip``) into empty `folder`.

    Real ``save_pretrained`` folders (model, processor, tokenizer) with toy sizes, built from
    a fixed seed without any download, so that :meth:`ClipInterrogator.load` and the code
    around it run the real transformers path on a CPU in well under a second. The output
    means nothing, but it is deterministic: captions are words of a small vocabulary, and
    every text gets its own CLIP embedding (byte-level BPE), so rankings are well defined.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty")
    _build_tiny_blip(folder / "blip")
    _build_tiny_clip(folder / "clip")
