"""Prompt travel: a video that walks from one prompt to the next ("a cat | a dog | a horse").

Every frame is a full txt2img with the same sampler; between two keyframes the frame at position t
(0 → 1, eased) is sampled from the two keyframes' starting noises interpolated spherically (slerp) and
with their conditioning interpolated linearly at every step (so prompt editing inside a keyframe still
works). Frame 0 of a transition is exactly the still of its first keyframe (its prompt, its seed), and
the video ends with the still of the last keyframe.

The interpolation is a feature on the engine's extension points, as an extension would write it:
`before_batch` sets each frame's starting noise (and the generator an ancestral sampler draws from:
the nearer keyframe's), `unet_inputs` mixes the conditioning each step, `postprocess` records each
frame's place in its infotext. `run_travel` makes the frames, a batch at a time, through
`Engine.txt2img`; between batches other people's jobs may run. Frames are written as they are made
(`frame-00000.png` …, each with its infotext), so an interrupted job keeps them and writes the video of
the frames done, and a later job can resume from them.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal, Protocol

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from webui.generation.extension_points import Batch, Feature, Output, Run, Step, UnetCall
from webui.generation.fields import Param
from webui.generation.noise import image_noise, pick_seed, slerp
from webui.generation.progress import NullProgress, PartProgress, ProgressSink, yield_turn
from webui.generation.requests import MAX_SEED, GenerationParams, Txt2ImgRequest, check_prompt
from webui.errors import FieldError
from webui.images.infotext import parse_infotext
from webui.images.store import ImageStore, read_infotext
from webui.images.video import SavedVideo
from webui.models.lora import extract_lora_tags

from webui.models.upscalers import BUILTIN, UpscalerLibrary

NAME = "prompt travel"
EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "ease in": lambda x: x * x,
    "ease out": lambda x: 1 - (1 - x) * (1 - x),
    "ease in out": lambda x: 0.5 - 0.5 * math.cos(math.pi * x),
}
Easing = Literal["linear", "ease in", "ease out", "ease in out"]


# -- the request ---------------------------------------------------------------------------------------------
class TravelKeyframe(BaseModel):
    """One stop of the journey: a prompt, its seed, and how many frames lead from it to the next."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Field(min_length=1, description="full A1111 prompt syntax, LoRA tags included")]
    seed: Annotated[int, Field(ge=-1, le=MAX_SEED, description="-1: the request's seed")] = -1
    frames: Annotated[int | None, Field(ge=1, le=10000, description="frames from this keyframe up to the "
                                                                    "next; empty: the request's `frames`")] = None
    easing: Annotated[Easing | None, Field(description="of the transition to the next; empty: the request's")] = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return check_prompt(v)


class TravelRequest(GenerationParams):
    """A prompt-travel video: the txt2img fields (sampler, steps, CFG, size, negative prompt…) plus
    keyframes. Without `keyframes`, `prompt` gives them: `a cat | a dog | a horse` on one line, or one
    prompt per line, all with the request's seed. The video has sum(frames) + 1 frames, ending on the
    last keyframe's own still; with `loop`, the last keyframe travels back to the first (its `frames`
    count) and the video ends just before it would repeat frame 0."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    keyframes: list[TravelKeyframe] = Field(default_factory=list, description="the prompts to travel through")
    frames: Annotated[int, Field(ge=1, le=10000, description="frames per transition (a keyframe's own wins)"),
                      Param("Frames between keyframes", maximum=240)] = 24
    fps: Annotated[int, Field(ge=1, le=120), Param("Frames per second", maximum=60)] = 12
    easing: Annotated[Easing, Field(description="how the frames are spaced along each transition"),
                      Param("Easing", ui="radio")] = "linear"
    loop: Annotated[bool, Field(description="travel back from the last keyframe to the first"),
                    Param("Loop back to the first keyframe")] = False
    upscaler: Annotated[str, Field(description="upscale the frames with this upscaler (GET /sdapi/v1/upscalers; "
                                               "None: keep the size)"),
                        Param("Upscale frames with", ui="dropdown", options=lambda: list(BUILTIN))] = "None"
    upscale_by: Annotated[float, Field(ge=1.0, le=4.0), Param("Upscale by", step=0.25)] = 2.0
    keyframes_only: bool = Field(False, description="make only each keyframe's still (cheap previews), no video")
    resume: str | None = Field(None, description="the `folder` of an earlier job of yours with the same "
                                                 "request: its frames are kept, the rest are made")

    @model_validator(mode="after")
    def _stops(self) -> "TravelRequest":
        if self.n_iter != 1:
            raise ValueError("n_iter: a travel is one video (batch_size is how many frames are sampled together)")
        if not self.keyframes:
            prompts = split_prompts(self.prompt)
            if len(prompts) < 2 and not (self.keyframes_only and prompts):
                raise ValueError("keyframes: at least two prompts (`a cat | a dog`, one per line, or keyframes)")
            object.__setattr__(self, "keyframes", [TravelKeyframe(prompt=p) for p in prompts])
        elif len(self.keyframes) < 2 and not self.keyframes_only:
            raise ValueError("keyframes: at least two keyframes to travel between")
        return self

    @property
    def total_frames(self) -> int:
        """Frames the job makes (keyframe stills only, or the whole video)."""
        return len(plan_frames(self))

    def transitions(self) -> list[tuple[int, int, int, Easing]]:
        """(from, to, frames, easing) for each leg of the journey."""
        stops = len(self.keyframes)
        legs = [(k, k + 1) for k in range(stops - 1)] + ([(stops - 1, 0)] if self.loop else [])
        return [(a, b, self.keyframes[a].frames or self.frames, self.keyframes[a].easing or self.easing)
                for a, b in legs]


def split_prompts(text: str) -> list[str]:
    """One prompt per line, or, on one line, prompts separated by `|` outside brackets (inside, `|` is
    A1111's alternation `[cat|dog]`)."""
    text = text.strip()
    if not text:
        return []
    if "\n" in text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        if ch == "|" and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


@dataclass(frozen=True)
class FramePlan:
    """Frame `index` of the video: between keyframes `a` and `b`, at eased position `t` (0 = a's still)."""

    index: int
    a: int
    b: int
    t: float
    linear: float  # the position before easing


def plan_frames(req: TravelRequest) -> list[FramePlan]:
    if req.keyframes_only:
        return [FramePlan(k, k, k, 0.0, 0.0) for k in range(len(req.keyframes))]
    plan: list[FramePlan] = []
    for a, b, count, easing in req.transitions():
        ease = EASINGS[easing]
        for i in range(count):
            x = i / count
            plan.append(FramePlan(len(plan), a, b, 0.0 if i == 0 else ease(x), x))
    if not req.loop:
        last = len(req.keyframes) - 1
        plan.append(FramePlan(len(plan), last, last, 0.0, 0.0))
    return plan


def plan_id(req: TravelRequest, seeds: list[int]) -> str:
    """What makes the frames what they are (so a resumed job can tell its own frames): the request
    without the video-only fields, and the keyframes' seeds."""
    fields = req.model_dump(exclude={"fps", "resume", "keyframes_only", "alwayson_scripts", "override_settings"})
    fields["seeds"] = seeds
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the feature: interpolation on the extension points ----------------------------------------------------
class TravelFrames(BaseModel):
    """What one engine call of a travel job carries: the keyframes and, per image of the batch, its plan."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    prompts: list[str]  # the keyframes' prompts as written (LoRA tags included)
    seeds: list[int]
    frames: list[FramePlan]
    plan: str = ""  # plan_id: recorded in every frame's infotext, so a resumed job knows its own frames


class PromptTravel(Feature):
    """Interpolates noise and conditioning between two keyframes per image. Active only in travel jobs
    (run_travel puts its settings on each request); it shows in no tab."""

    name: ClassVar[str] = NAME
    title: ClassVar[str] = "Prompt travel"
    settings: ClassVar[type[BaseModel]] = TravelFrames
    tabs: ClassVar[tuple[str, ...]] = ()

    def infotext(self, run: Run) -> dict[str, Any]:
        return {}

    def prepare(self, run: Run) -> None:
        travel: TravelFrames = run.settings_of(self)
        if len(travel.frames) != len(run.prompts):
            raise ValueError(f"prompt travel: {len(travel.frames)} frames planned for {len(run.prompts)} images")
        run.prompts = [frame_prompts(travel, f)[0] for f in travel.frames]

    def before_batch(self, run: Run, batch: Batch) -> None:
        travel: TravelFrames = run.settings_of(self)
        frames = travel.frames[batch.index * len(batch.seeds):][:len(batch.seeds)]
        shape = (1, *batch.noise.shape[1:])
        noises, generators = [], []
        for i, f in enumerate(frames):
            noise_a, gen_a = image_noise(shape, travel.seeds[f.a], batch.subseeds[i], run.request.subseed_strength)
            if f.t == 0.0:
                noises.append(noise_a)
                generators.append(gen_a)
                continue
            noise_b, gen_b = image_noise(shape, travel.seeds[f.b], batch.subseeds[i], run.request.subseed_strength)
            noises.append(slerp(f.t, noise_a, noise_b))
            generators.append(gen_a if f.t < 0.5 else gen_b)  # an ancestral sampler's own noise: the nearer's
        batch.noise = torch.cat(noises).to(batch.noise.device, batch.noise.dtype)
        batch.generators = generators
        batch.seeds = [travel.seeds[f.a] for f in frames]
        if any(f.t > 0.0 for f in frames):
            towards = [frame_prompts(travel, f)[1] for f in frames]
            cond_b, _ = run.conditioning(towards, batch.negative_prompts, run.request.steps)
            run.state.setdefault(NAME, {})[batch.index] = (
                cond_b, torch.tensor([f.t for f in frames]).view(-1, 1, 1))

    def unet_inputs(self, step: Step, call: UnetCall) -> None:
        towards = step.run.state.get(NAME, {}).get(step.batch.index)
        if towards is None or step.pass_name != "first":  # all at a keyframe, or a further pass (hires)
            return
        cond_b, t = towards
        cond_a, uncond = step.batch.cond, step.batch.uncond
        n = step.number
        length = max(call.context.shape[1], cond_b.max_length(step.run.request.steps))
        a, b = cond_a.at(n, length), cond_b.at(n, length)
        mixed = a + t.to(a.device, a.dtype) * (b - a)  # t = 0 rows: exactly a
        call.context = torch.cat([uncond.at(n, length), mixed]) if call.guided else mixed
        if call.added is not None and "text_embeds" in call.added:  # SDXL's pooled text embedding
            pa, pb = cond_a.pooled_at(n), cond_b.pooled_at(n)
            pooled = pa + t.view(-1, 1).to(pa.device, pa.dtype) * (pb - pa)
            call.added = {**call.added, "text_embeds": torch.cat([uncond.pooled_at(n), pooled]) if call.guided
                          else pooled}

    def postprocess(self, run: Run, batch: Batch, outputs: list[Output]) -> None:
        travel: TravelFrames = run.settings_of(self)
        frames = travel.frames[batch.index * len(batch.seeds):][:len(batch.seeds)]
        for out, f in zip(outputs, frames):
            out.prompt = travel.prompts[f.a]
            out.seed = travel.seeds[f.a]
            out.params.update({"Travel frame": f.index, "Travel keyframes": f"{f.a + 1}-{f.b + 1}",
                               "Travel position": f"{f.t:.4f}", "Travel seed to": travel.seeds[f.b],
                               "Travel plan": travel.plan})


def frame_prompts(travel: TravelFrames, f: FramePlan) -> tuple[str, str]:
    """The prompts a frame is made from: (from, towards). When the two keyframes use LoRAs, both carry
    the same tags at weights interpolated to the frame's position, so the UNet and both conditionings
    see one set of LoRAs; at t = 0 that is the first keyframe's own set."""
    a_text, a_uses = extract_lora_tags(travel.prompts[f.a])
    b_text, b_uses = extract_lora_tags(travel.prompts[f.b])
    if f.t == 0.0 or (not a_uses and not b_uses):
        return travel.prompts[f.a], travel.prompts[f.b]
    weights = {u.name: (1 - f.t) * u.weight for u in a_uses}
    for u in b_uses:
        weights[u.name] = weights.get(u.name, 0.0) + f.t * u.weight
    tags = "".join(f"<lora:{name}:{w:.6g}>" for name, w in weights.items())
    return a_text + tags, b_text + tags


# -- the job -----------------------------------------------------------------------------------------------
@dataclass
class TravelResult:
    request: TravelRequest  # size and seeds resolved
    seeds: list[int]
    plan: list[FramePlan]
    frame_paths: list[Path] = field(default_factory=list)  # in order, one per frame done
    infotexts: list[str] = field(default_factory=list)
    resumed: int = 0  # frames taken from the earlier job
    interrupted: bool = False
    seconds: float = 0.0


class FrameSink(Protocol):
    """Where a travel job's frames go as they are made: `save(image, infotext, index)` → the file's path;
    `existing(plan)` lists the frames an earlier job of the same plan left (index → path)."""

    def save(self, image: Image.Image, infotext: str, index: int) -> Path: ...

    def existing(self, plan: str) -> dict[int, Path]: ...


def resolve_travel(req: TravelRequest, trained_size: tuple[int, int]) -> tuple[TravelRequest, list[int]]:
    """Size (the checkpoint's trained size unless given) and each keyframe's seed decided."""
    base = pick_seed(req.seed)
    seeds = [pick_seed(k.seed) if k.seed >= 0 else base for k in req.keyframes]
    resolved = req.model_copy(update={"width": req.width or trained_size[0], "height": req.height or trained_size[1],
                                      "seed": base})
    return resolved, seeds


def frame_request(req: TravelRequest, seeds: list[int], frames: list[FramePlan]) -> Txt2ImgRequest:
    """One engine call: the frames of `frames`, sampled together."""
    fields = req.model_dump(include=set(GenerationParams.model_fields) - {"alwayson_scripts"})
    travel = TravelFrames(prompts=[k.prompt for k in req.keyframes], seeds=seeds, frames=frames,
                          plan=plan_id(req, seeds))
    fields.update(prompt=req.keyframes[frames[0].a].prompt, seed=seeds[frames[0].a], batch_size=len(frames),
                  n_iter=1, alwayson_scripts={**req.alwayson_scripts, NAME: travel})
    return Txt2ImgRequest(**fields)


def run_travel(engine, model, request: TravelRequest, sink: FrameSink, progress: ProgressSink | None = None,
               models: Callable | None = None, upscalers: UpscalerLibrary | None = None) -> TravelResult:
    """Make the frames (the engine samples them, `batch_size` at a time), writing each to `sink`; frames an
    earlier job of the same plan left are kept (`request.resume`). Stops early when told to, keeping
    what is done; between batches other owners' jobs may run (`models` gives the model back)."""
    started = time.perf_counter()
    progress = progress or NullProgress()
    req, seeds = resolve_travel(request, model.default_size)
    plan = plan_frames(req)
    result = TravelResult(req, seeds, plan)
    done = {i: p for i, p in sink.existing(plan_id(req, seeds)).items() if i < len(plan)} if req.resume else {}
    todo = [f for f in plan if f.index not in done]
    result.resumed = len(plan) - len(todo)
    batches = [todo[i:i + req.batch_size] for i in range(0, len(todo), req.batch_size)]
    paths: dict[int, Path] = dict(done)
    for n, frames in enumerate(batches):
        if n > 0 and yield_turn(progress) and models is not None:  # (also after an upscale cut short: stops)
            model = models(req.checkpoint, req.vae)
        if progress.should_stop():
            break
        shown = f"{frames[0].index + 1}" + (f"–{frames[-1].index + 1}" if len(frames) > 1 else "")
        part = PartProgress(progress, n, len(batches), label=f"frame {shown} of {len(plan)}")
        out = engine.txt2img(model, frame_request(req, seeds, frames), part)
        if out.interrupted or len(out.images) < len(frames):
            break
        for f, image, info in zip(frames, out.images, out.infotexts):
            if req.upscaler != "None":
                size = (round(image.width * req.upscale_by), round(image.height * req.upscale_by))
                image = (upscalers or UpscalerLibrary()).upscale(req.upscaler, image, size,
                                                                 lambda done, total: not progress.should_stop())
                if image is None:  # interrupted between tiles
                    break
            paths[f.index] = sink.save(image, info, f.index)
            result.infotexts.append(info)
    # the frames in order, up to the first one missing (a video never skips a frame)
    for f in plan:
        if f.index not in paths:
            break
        result.frame_paths.append(paths[f.index])
    result.interrupted = len(result.frame_paths) < len(plan)
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class TravelVideo(SavedVideo):
    """What a travel job leaves behind: `NNNNN-SEED/frame-NNNNN.png` and `NNNNN-SEED.mp4` in one folder."""

    frame_paths: list[Path] = field(default_factory=list)
    folder: str = ""  # the frames' folder under outputs/travel (what `resume` takes)
    resumed: int = 0


def read_frames(paths: list[Path]) -> Iterator[Image.Image]:
    for path in paths:
        with Image.open(path) as image:
            yield image.convert("RGB")


class StoreFrames:
    """A travel job's frames in one folder of the image store (`outputs/travel/DATE/NNNNN-SEED/`), written
    as they are made (PNG with infotext, announced to the save hooks like any output)."""

    def __init__(self, store: ImageStore, folder: Path, owner: str | None):
        self.store, self.folder, self.owner = store, folder, owner

    def save(self, image: Image.Image, infotext: str, index: int) -> Path:
        return self.store.save(image, infotext, "travel", owner=self.owner, folder=self.folder,
                               name=f"frame-{index:05d}")

    def existing(self, plan: str) -> dict[int, Path]:
        found: dict[int, Path] = {}
        for path in sorted(self.folder.glob("frame-*.png")):
            try:
                with Image.open(path) as image:
                    parsed = parse_infotext(read_infotext(image) or "")
                if parsed.get("Travel plan") == plan:
                    found[int(parsed["Travel frame"])] = path
            except (OSError, ValueError, KeyError):
                continue  # a damaged frame is made again
        return found


def save_travel(result: TravelResult, store: ImageStore, folder: Path, owner: str | None) -> TravelVideo:
    """The video of the frames made (all of them, or those before the first missing one) beside their
    folder: `NNNNN-SEED.mp4`."""
    req = result.request
    done = TravelVideo(None, 0, req.fps, (req.width, req.height), result.interrupted, result.seconds,
                       result.infotexts[-1] if result.infotexts else "", frame_paths=result.frame_paths,
                       folder=folder.relative_to(store.outputs_dir / "travel").as_posix(), resumed=result.resumed)
    if req.keyframes_only or not result.frame_paths:
        return done
    with Image.open(result.frame_paths[0]) as first:
        size = first.size
    video = folder.with_suffix(".mp4")
    done.frames = store.save_video(read_frames(result.frame_paths), video, req.fps, size, owner)
    done.video, done.size = video, size
    return done


def resume_folder(store: ImageStore, name: str, owner: str | None, owner_of: Callable[[Path], str | None]) -> Path:
    """The frames folder an earlier travel job of `owner`'s left (`name` as its result's `folder` says);
    FieldError naming `resume` when there is none or it is someone else's."""
    root = (store.outputs_dir / "travel").resolve()
    folder = (root / name).resolve()
    if not folder.is_relative_to(root) or folder == root or not folder.is_dir() or ".." in Path(name).parts:
        raise FieldError("resume", f"no travel frames folder {name!r} (use the `folder` of an earlier job)")
    frames = sorted(folder.glob("frame-*.png"))
    if frames and owner_of(frames[0]) not in (owner, None):
        raise FieldError("resume", f"no travel frames folder {name!r} of yours")
    return folder
