"""Prompt editing, alternation and AND while sampling, on the real tiny pipelines.

The schedules themselves are checked against A1111's doctests in test_prompt_schedule.py.
Here each rule is shown in pixels: a prompt whose edit never happens paints exactly what
its first text paints, one that switches at the last model call does not, and so on.
The counter counts model calls from 0: 8 steps at full denoising are calls 0…7.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.prompt_plan import plan_prompts, split_and, timeline_steps
from daemon.a1111.samplers import parse_sampler, second_order
from daemon.config.profiles import Profile
from daemon.engines.diffusion import Canvas, DiffusionEngine
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace, wait_for

# --- the plan (pure) ---------------------------------------------------------------------


def test_and_splits_into_weighted_parts_as_a1111():
    assert split_and("a cat AND a dog:0.7") == [("a cat", 1.0), (" a dog", 0.7)]
    assert split_and("ANDROID, a cat:-1.5") == [("ANDROID, a cat", -1.5)]
    assert split_and("(a cat:1.2)") == [("(a cat:1.2)", 1.0)]  # emphasis is not a weight
    assert split_and("a and b") == [("a and b", 1.0)]  # case-sensitive


def test_the_plan_of_an_ordinary_prompt_is_plain():
    plan = plan_prompts("(masterpiece:1.2), a cat, [dim]", "lowres", 20)
    assert plan.plain and plan.fixed_texts == ("(masterpiece:1.2), a cat, [dim]", "lowres")
    assert not plan_prompts("a cat:1.2", "", 20).plain  # a weight is composable diffusion
    assert not plan_prompts("a [cat:dog:5]", "", 20).plain
    assert not plan_prompts("a cat", "[ugly|bad]", 20).plain


def test_the_negative_prompt_is_not_split_and_texts_are_listed_once():
    plan = plan_prompts("[a|b] AND [b:c:2]", "x AND y", 4)
    assert plan.texts == ("a", "b", " b", " c")  # as split: the encoder strips spaces
    assert plan.negative_texts == ("x AND y",)
    assert [part.weight for part in plan.parts] == [1.0, 1.0]


def test_second_order_samplers_count_twice():
    assert second_order(parse_sampler("Heun")) and second_order(parse_sampler("DPM++ SDE"))
    assert not second_order(parse_sampler("Euler a"))
    assert timeline_steps(20, second_order=True) == 40


def test_what_does_not_parse_is_said():
    assert "'|' outside" in plan_prompts("a | [b:c:3]", "", 10).notes[0]
    assert "not a number" in plan_prompts("a [b:c:soon]", "", 10).notes[0]
    assert plan_prompts("a [b:c:3]", "", 10).notes == ()


# --- pixels --------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IMAGE = Image.open(DATA / "chelsea.png").convert("RGB")
A, B = "a red fox in the snow", "a blue car on a road"


@pytest.fixture(scope="module")
def engine(models: ModelCache) -> DiffusionEngine:
    return DiffusionEngine(models)


def paint(
    engine: DiffusionEngine, prompt: str, negative: str = "", *, mask=None, **keys
) -> np.ndarray:
    settings = Profile(**{"model": "builtin:tiny-sd", "steps": 8, "denoising_strength": 1.0,
                          "sampler_name": "Euler", "cfg_scale": 6, **keys})  # fmt: skip
    painting = engine.paint(Canvas(IMAGE, mask), settings, width=64, height=64, seed=11,
                            prompt=prompt, negative_prompt=negative)  # fmt: skip
    return np.asarray(painting.images[0], dtype=np.int16)


def same(a: np.ndarray, b: np.ndarray, levels: int = 0) -> bool:
    return int(np.abs(a - b).max()) <= levels


MODELS = ["builtin:tiny-sd", "builtin:tiny-sdxl"]


def calls(engine, models, prompt: str, negative: str = "", **keys) -> list[str]:
    """Which texts condition each UNet call, in order: "neg/pos" (or "pos" unguided), seen by
    a hook on the real UNet after the daemon's own (it observes, it changes nothing)."""
    from daemon.engines.prompt_encoder import PromptEncoder

    model = keys.get("model", "builtin:tiny-sd")
    pipe = models.pipeline(model, "img2img")
    encoder = PromptEncoder(pipe)
    known = {name: encoder.embed(text).z for name, text in
             {"A": A, "B": B, "N1": "ugly", "N2": "blurry, lowres", "-": ""}.items()}  # fmt: skip

    def name(z) -> str:
        if not z.any():
            return "0"  # SDXL's empty negative prompt
        return next((n for n, known_z in known.items() if known_z.equal(z[None])), "?")

    seen: list[str] = []

    def look(_module, _args, kwargs, _output) -> None:
        rows = kwargs["encoder_hidden_states"]
        seen.append("/".join(name(row) for row in rows))

    hook = pipe.unet.register_forward_hook(look, with_kwargs=True)
    try:
        paint(engine, prompt, negative, **keys)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("model", MODELS)
def test_an_edit_switches_after_its_step(engine, models, model):
    a, b = paint(engine, A, model=model), paint(engine, B, model=model)
    assert not same(a, b)
    no = "0" if model.endswith("sdxl") else "-"  # an empty negative: zeros on SDXL
    assert calls(engine, models, f"[{A}:{B}:6]", model=model) == [f"{no}/A"] * 7 + [f"{no}/B"]
    assert same(paint(engine, f"[{A}:{B}:0]", model=model), b)  # below 1: `to` from the start
    assert same(paint(engine, f"[{A}:{B}:7]", model=model), a)  # calls 0…7 all ≤ 7
    assert same(paint(engine, f"[{A}:{B}:0.99]", model=model), a)  # int(0.99 × 8) = 7
    switched = paint(engine, f"[{A}:{B}:2]", model=model)  # calls 0…2 `from`, then `to`
    assert not same(switched, a) and not same(switched, b)
    # [to:when] and [from::when].
    assert same(paint(engine, f"[{B}:0]", model=model), b)
    assert same(paint(engine, f"[{A}::8]", model=model), a)
    assert calls(engine, models, f"[{B}:5]", model=model) == [f"{no}/-"] * 6 + [f"{no}/B"] * 2


def test_the_negative_prompt_is_scheduled_too(engine, models):
    plain = paint(engine, A, "blurry, lowres")
    assert same(paint(engine, A, "[ugly:blurry, lowres:0]"), plain)
    assert calls(engine, models, A, "[ugly:blurry, lowres:4]") == ["N1/A"] * 5 + ["N2/A"] * 3
    assert not same(paint(engine, A, "[ugly:blurry, lowres:2]"), plain)


def test_img2img_builds_the_timeline_on_the_profiles_steps(engine, models):
    """20 steps at denoising 0.5 run 10 calls (counter 0…9) on a timeline of 20."""
    keys = {"steps": 20, "denoising_strength": 0.5}
    a = paint(engine, A, **keys)
    assert same(paint(engine, f"[{A}:{B}:0.5]", **keys), a)  # boundary 10: never reached
    assert same(paint(engine, f"[{A}:{B}:9]", **keys), a)
    assert calls(engine, models, f"[{A}:{B}:8]", **keys) == ["-/A"] * 9 + ["-/B"]
    assert calls(engine, models, f"[{A}:{B}:0.25]", **keys) == ["-/A"] * 6 + ["-/B"] * 4
    assert not same(paint(engine, f"[{A}:{B}:0.25]", **keys), a)


def test_img2img_fix_steps_runs_the_whole_timeline(engine, models):
    keys = {"steps": 20, "denoising_strength": 0.5, "img2img_fix_steps": True}
    a = paint(engine, A, **keys)
    assert same(paint(engine, f"[{A}:{B}:19]", **keys), a)  # 20 calls: counter 0…19
    assert calls(engine, models, f"[{A}:{B}:0.5]", **keys) == ["-/A"] * 11 + ["-/B"] * 9
    assert not same(paint(engine, f"[{A}:{B}:0.5]", **keys), a)


def test_second_order_samplers_count_each_model_call(engine, models):
    """Heun at 4 steps calls the model 7 times (counter 0…6) on a timeline of 8."""
    keys = {"steps": 4, "sampler_name": "Heun"}
    a = paint(engine, A, **keys)
    assert same(paint(engine, f"[{A}:{B}:6]", **keys), a)
    assert calls(engine, models, f"[{A}:{B}:0.5]", **keys) == ["-/A"] * 5 + ["-/B"] * 2
    assert not same(paint(engine, f"[{A}:{B}:0.5]", **keys), a)


def test_alternation_follows_the_model_calls(engine, models):
    """[a|b] gives a, a, b, a, …: A1111's entries start at 1, its counter at 0."""
    assert calls(engine, models, f"[{A}|{B}]", steps=5) == ["-/A", "-/A", "-/B", "-/A", "-/B"]
    assert same(paint(engine, f"[{A}|{B}]", steps=2), paint(engine, A, steps=2))
    assert not same(paint(engine, f"[{A}|{B}]", steps=3), paint(engine, A, steps=3))
    assert calls(engine, models, f"[{A}|{B}|]", steps=4) == ["-/A", "-/A", "-/B", "-/-"]


@pytest.mark.parametrize("model", MODELS)
def test_a_weight_is_guidance(engine, model):
    """uncond + w·cfg·(cond − uncond): weight 2 at CFG 3 is weight 1 at CFG 6."""
    doubled = paint(engine, f"{A}:2", cfg_scale=3, model=model)
    assert same(doubled, paint(engine, A, cfg_scale=6, model=model), levels=1)


@pytest.mark.parametrize("model", MODELS)
def test_and_with_one_part_that_counts_is_the_plain_prompt(engine, models, model):
    plain = paint(engine, A, "lowres", model=model)
    assert same(paint(engine, f"{A} AND {B}:0", "lowres", model=model), plain, levels=1)
    both = paint(engine, f"{A} AND {B}", "lowres", model=model)
    assert not same(both, plain, levels=1)
    pushed = paint(engine, f"{A} AND {B}:-1", "lowres", model=model)  # a negative weight
    assert not same(pushed, both, levels=1) and not same(pushed, plain, levels=1)
    # One UNet batch a call: the negative, then each part with its own edits.
    seen = calls(engine, models, f"[{A}:{B}:1] AND {B}:0.5", "[ugly:blurry, lowres:0]",
                 model=model, steps=3)  # fmt: skip
    assert seen == ["N2/A/B", "N2/A/B", "N2/B/B"]


@pytest.mark.parametrize("model", MODELS)
def test_and_and_edits_inpaint(engine, model):
    mask = Image.new("L", IMAGE.size, 0)
    mask.paste(255, (IMAGE.width // 4, IMAGE.height // 4, IMAGE.width // 2, IMAGE.height // 2))
    plain = paint(engine, A, mask=mask, model=model, denoising_strength=0.75)
    edited = paint(engine, f"[{B}:{A}:0] AND {B}:0", mask=mask, model=model,
                   denoising_strength=0.75)  # fmt: skip
    assert same(edited, plain, levels=1)
    assert not same(paint(engine, f"{A} AND {B}", mask=mask, model=model,
                          denoising_strength=0.75), plain, levels=1)  # fmt: skip


@pytest.fixture(scope="module")
def sd2_like(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model made SD-2-like where it matters here: v-prediction, and a tokenizer
    that pads with "!" after the end token (OpenCLIP's), in a folder of its own."""
    from daemon.models.builtin import ensure_builtin

    folder = tmp_path_factory.mktemp("sd2") / "tiny-sd2"
    shutil.copytree(ensure_builtin("tiny-sd", state_dir / "builtin"), folder)
    changes = {
        "scheduler/scheduler_config.json": ("prediction_type", "v_prediction"),
        "tokenizer/tokenizer_config.json": ("pad_token", "!"),
    }
    for name, (key, value) in changes.items():
        path = folder / name
        config = json.loads(path.read_text())
        config[key] = value
        path.write_text(json.dumps(config))
    return str(folder)


def test_sd2_style_v_prediction_follows_the_same_rules(engine, models, sd2_like):
    a, b = paint(engine, A, model=sd2_like), paint(engine, B, model=sd2_like)
    pipe = models.pipeline(sd2_like, "img2img")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer.pad_token == "!"
    assert same(paint(engine, f"[{A}:{B}:0]", model=sd2_like), b)
    assert same(paint(engine, f"[{A}:{B}:7]", model=sd2_like), a)
    assert not same(paint(engine, f"[{A}:{B}:2]", model=sd2_like), a)
    doubled = paint(engine, f"{A}:2", cfg_scale=3, model=sd2_like)
    assert same(doubled, paint(engine, A, cfg_scale=6, model=sd2_like), levels=1)
    assert same(paint(engine, f"{A} AND {B}:0", model=sd2_like), a, levels=1)


def test_long_parts_are_padded(engine):
    """A two-chunk prompt with a one-chunk negative and a one-chunk second part."""
    long = ", ".join(["a red fox in the deep white snow"] * 12)
    plain = paint(engine, long, "lowres")
    assert same(paint(engine, f"{long} AND {long}:0", "lowres"), plain, levels=1)
    mixed = paint(engine, f"{long} AND {B}:0.5 BREAK sky", "lowres")
    assert not same(mixed, plain, levels=1)


def test_without_guidance_and_still_combines(engine, models):
    """At CFG 1 diffusers runs no negative; A1111's combination still needs it."""
    a = paint(engine, A, cfg_scale=1)
    assert not same(paint(engine, f"{A} AND {B}", cfg_scale=1), a, levels=1)
    assert same(paint(engine, f"{A} AND {B}:0", cfg_scale=1), a, levels=1)
    assert calls(engine, models, f"{A} AND {B}", cfg_scale=1, steps=2) == ["-/A/B"] * 2
    assert calls(engine, models, f"[{A}:{B}:6]", cfg_scale=1) == ["A"] * 7 + ["B"]


def test_a_batch_and_iterations_follow_the_schedule(engine):
    single = paint(engine, f"[{A}:{B}:4] AND {B}:0.3")
    batched = paint(engine, f"[{A}:{B}:4] AND {B}:0.3", batch_size=2, n_iter=2)
    assert same(batched, single, levels=1)  # the first image of the first iteration


def test_each_distinct_text_is_encoded_once(engine, models):
    pipe = models.pipeline("builtin:tiny-sd", "img2img")
    calls: list[int] = []
    hook = pipe.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        # Texts no other test uses: the model's prompt cache has none of them yet.
        prompt = "[zq one|zq two] AND [zq two:zq three:3]:0.5"
        paint(engine, prompt, "[zq four:zq five:2]")
        # Three positive texts (" zq two" after the AND is "zq two" to the tokenizer), two
        # negative ones, one chunk each.
        assert len(calls) == 5
        paint(engine, prompt, "[zq four:zq five:2]", cfg_scale=4)
        assert len(calls) == 5  # the next image (or clip frame) encodes nothing
        paint(engine, "zq six", "zq seven")
        assert len(calls) == 7  # no feature: the prompt and the negative, as always
    finally:
        hook.remove()


# --- through the daemon --------------------------------------------------------------------


def test_a_clips_frames_all_follow_the_schedule(workspace: Workspace, running):
    prompt = f"[{A}:{B}:2] AND {B}:0.4"
    workspace.profile("sched", prompt=prompt, negative_prompt="[ugly|lowres]",
                      color_correction=False, max_batch=2)  # fmt: skip
    workspace.profile("single", prompt=prompt, negative_prompt="[ugly|lowres]")
    workspace.profile("plain", prompt=A, negative_prompt="ugly")
    staging = workspace.root / "sched/clip"
    staging.mkdir(parents=True)
    for index in range(1, 5):  # four identical frames: one schedule gives four equal results
        shutil.copyfile(DATA / "chelsea.png", staging / f"frame_{index:04d}.png")
    daemon = running()
    (workspace.inbox / "sched").rmdir()  # the whole clip renamed in: its frames batch
    staging.parent.rename(workspace.inbox / "sched")
    workspace.drop("chelsea.png", "single/frame.png")
    workspace.drop("chelsea.png", "plain/frame.png")
    wait_for(lambda: daemon.tally.done == 6, timeout=120)

    def pixels(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)

    frames = [pixels(p) for p in sorted((workspace.outbox / "sched").rglob("frame_*.png"))]
    single = pixels(workspace.outbox / "single/frame.png")
    assert len(frames) == 4 and all(same(frame, single, levels=1) for frame in frames)
    assert not same(single, pixels(workspace.outbox / "plain/frame.png"), levels=1)


def test_a_prompt_that_does_not_parse_is_used_as_written_and_said(
    workspace: Workspace, running, logs
):
    workspace.profile("odd", prompt="a fox | a car [x:y:3]", negative_prompt="[ugly:bad:soon]")
    running()
    workspace.drop("chelsea.png", "odd/a.png")
    wait_for(lambda: workspace.done("odd"))
    assert not workspace.failed("odd") and (workspace.outbox / "odd/a.png").exists()
    said = [line for line in logs if "odd/a.png: prompt:" in line]
    assert any("'|' outside of an [a|b] alternation" in line for line in said), logs
    assert any("'soon', not a number" in line for line in said), logs
