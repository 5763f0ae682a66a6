"""The extension points of generation: what a feature can hook into, and what each hook is given.

A *feature* is a `Feature` subclass with a name, optional typed per-job settings and any of the
hooks below. Easel's built-ins (classifier-free guidance, inpainting, …) register exactly the way an
extension does (`FeatureRegistry.add`), and the pipeline (webui/generation/engine.py) calls every
active feature at each point, in registration order:

    prepare(run)                         the request is resolved; change the per-image prompts, add state
    before_batch(run, batch)             a batch's seeds, prompts and noise are set: change prompts or noise
    per sampling step:
      unet_inputs(step, call)            add or change the UNet's inputs (extra channels, residuals, context)
      guidance(step, guidance)           combine the unconditional and conditional predictions
      after_step(step, latents)          the latents after the scheduler's step (return new ones, or None)
    further_pass(run, batch, latents)    another denoising pass (hires fix) through `run.sample(...)`
    postprocess(run, batch, outputs)     the decoded images: change them, add infotext fields per image
    before_save(pending)                 every image the store writes (any job kind): change image or infotext
    after_save(saved)                    an event once a file is on disk, with its path, owner and parameters

A *script* (`Script`) takes over a whole job, as A1111's `script_name` does (X/Y/Z plot, SD upscale):
it runs generations through `ScriptContext.generate`.

Hooks get everything through their arguments; a feature instance serves every job at once, so it
keeps no per-job state on itself (use `run.state`). Nothing here is global: the registry is an
object the application creates and hands to the engine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import torch
from PIL import Image
from pydantic import BaseModel, ValidationError

from webui.images.store import PendingSave, SavedImage

from .errors import FieldError
from .fields import infotext_keys, infotext_params, values_from_infotext

if TYPE_CHECKING:
    from webui.models.loader import LoadedModel

    from .conditioning import ScheduledConditioning
    from .latents import InitLatents
    from .progress import ProgressSink
    from .requests import GenerationParams
    from .result import GenerationResult

log = logging.getLogger(__name__)


# -- what the hooks see ------------------------------------------------------------------------------
@dataclass
class Run:
    """One job's generation, as every stage sees it."""

    model: LoadedModel
    request: GenerationParams  # resolved: seed, size and sampler decided
    progress: ProgressSink
    features: list[Feature]  # the active ones, in order
    settings: dict[str, BaseModel]  # validated settings by feature name
    prompts: list[str]  # one per image of the job (features may change them in `prepare`)
    negative_prompts: list[str]
    options: dict[str, Any] = field(default_factory=dict)  # the caller's options (override_settings)
    infotext: dict[str, Any] = field(default_factory=dict)  # fields every image's infotext gets
    state: dict[str, Any] = field(default_factory=dict)  # per-feature scratch space, keyed by feature name
    init: Any = None  # img2img: what the init image became (webui.generation.engine.Img2ImgInit)
    sampler: Callable[..., torch.Tensor | None] | None = field(default=None, repr=False)
    decoder: Callable[..., list[Image.Image]] | None = field(default=None, repr=False)
    encoder: Callable[..., torch.Tensor] | None = field(default=None, repr=False)
    conditioner: Callable[..., tuple] | None = field(default=None, repr=False)
    # (checkpoint, vae) -> a loaded model, held for this job; None where the engine runs without a job
    models: Callable[[str | None, str | None], LoadedModel] | None = field(default=None, repr=False)

    def settings_of(self, feature: Feature | str) -> Any:
        return self.settings.get(feature if isinstance(feature, str) else feature.name)

    def sample(self, batch: Batch, start: InitLatents | None = None, **changes: Any) -> torch.Tensor | None:
        """Denoise `batch` again (a further pass): from `start` latents at its strength, with optional
        changes (`steps`, `sampler_name`, `scheduler`, `width`, `height`, `pass_name`); every per-step
        hook runs as in the first pass. None when the job was told to stop."""
        assert self.sampler is not None
        return self.sampler(self, batch, start, **changes)

    def decode(self, latents: torch.Tensor, model: LoadedModel | None = None) -> list[Image.Image]:
        """Pictures from latents, with `model`'s VAE (default: the job's model); NaN-checked."""
        assert self.decoder is not None
        return self.decoder(latents, model)

    def encode(self, images: list[Image.Image], model: LoadedModel | None = None) -> torch.Tensor:
        assert self.encoder is not None
        return self.encoder(images, model)

    def conditioning(self, prompts: list[str], negative_prompts: list[str], steps: int,
                     hires_steps: int | None = None, model: LoadedModel | None = None) -> tuple:
        """(cond, uncond) for other prompts, steps or model (a further pass), LoRA tags honoured; with
        `hires_steps`, prompt editing counts through the first pass into this one (A1111's rule)."""
        assert self.conditioner is not None
        return self.conditioner(prompts, negative_prompts, steps, hires_steps, model or self.model)


@dataclass
class Batch:
    """One batch of a job (A1111's `batch_size` images sampled together; a job has `n_iter` of them)."""

    index: int
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    noise: torch.Tensor  # [B, C, h, w] float32, the starting noise (before the scheduler's scaling)
    generators: list[torch.Generator] = field(default_factory=list, repr=False)
    cond: ScheduledConditioning | None = None
    uncond: ScheduledConditioning | None = None
    start: InitLatents | None = None  # img2img: where sampling starts
    model: LoadedModel | None = None  # the model a further pass left the latents in (decoded with its VAE)


@dataclass
class Step:
    """One sampling step of one pass."""

    run: Run
    batch: Batch
    index: int  # 0-based position in this pass's timesteps (second-order samplers visit some twice)
    count: int  # timesteps in this pass
    number: int  # the step counter prompt schedules use (A1111's), 0-based
    timestep: torch.Tensor
    scheduler: Any
    timesteps: torch.Tensor  # this pass's timesteps
    pass_name: str = "first"

    @property
    def fraction(self) -> float:
        """How far through this pass the step is, 0 at the first step (for start/end windows)."""
        return self.index / self.count if self.count else 0.0

    @property
    def next_timestep(self) -> torch.Tensor | None:
        """The timestep after this one ([1]), or None at the last."""
        nxt = self.index + 1
        return self.timesteps[nxt:nxt + 1] if nxt < len(self.timesteps) else None


@dataclass
class UnetCall:
    """The UNet's inputs at one step; `unet_inputs` hooks may change any of them."""

    latents: torch.Tensor  # the scaled latents (4 channels; doubled for guidance)
    sample: torch.Tensor  # what the UNet is given (inpainting models: 4 + 5 channels)
    timestep: torch.Tensor
    context: torch.Tensor  # encoder_hidden_states
    added: dict | None  # SDXL's added_cond_kwargs
    guided: bool  # the batch is [unconditional..., conditional...]
    extra: dict[str, Any] = field(default_factory=dict)  # more UNet keyword arguments (ControlNet residuals…)


@dataclass
class Guidance:
    """The two predictions of a guided step; each `guidance` hook may set `result`."""

    uncond: torch.Tensor
    cond: torch.Tensor
    scale: float
    result: torch.Tensor | None = None


@dataclass
class Output:
    """One decoded image and what its infotext will say; `postprocess` hooks may change both."""

    image: Image.Image
    seed: int
    subseed: int
    prompt: str
    negative_prompt: str
    params: dict[str, Any] = field(default_factory=dict)  # infotext fields of this image only


# -- features ------------------------------------------------------------------------------------------
def settings_from(model: type[BaseModel], value: Any, path: str) -> BaseModel:
    """Settings from A1111's positional list (in the model's field order) or from an object by name; a
    FieldError names the field as it was sent (`path.2` for the third value, `path.name` otherwise)."""
    if isinstance(value, (list, tuple)):
        names = list(model.model_fields)
        if len(value) > len(names):
            raise FieldError(path, f"takes at most {len(names)} values ({', '.join(names)})")
        data, where = dict(zip(names, value)), {n: str(i) for i, n in enumerate(names)}
    elif isinstance(value, dict):
        data, where = value, {}
    else:
        raise FieldError(path, "must be a list or an object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        full = ".".join(p for p in [path, where.get(loc[0], loc[0]), *loc[1:]] if p) if loc else path
        raise FieldError(full, err["msg"].removeprefix("Value error, ")) from None


class Feature:
    """A part of generation on the extension points. Override the hooks you need.

    name      the key in `alwayson_scripts` (matched without case, like A1111's script titles)
    settings  a pydantic model of its per-job settings (fields described with `Param` so their infotext
              and widgets come from one description), or None for a feature without settings
    builtin   True for Easel's own always-on parts; they run for every job where `active` says so
    tabs      the page's tabs that show its settings ("txt2img", "img2img")
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    settings: ClassVar[type[BaseModel] | None] = None
    builtin: ClassVar[bool] = False
    tabs: ClassVar[tuple[str, ...]] = ("txt2img", "img2img")
    # A1111 sends some features' settings at the top level of a txt2img/img2img body (`enable_hr`,
    # `hr_scale`, `styles`, …): True takes them from there too (into `alwayson_scripts[name]`)
    top_level: ClassVar[bool] = False

    # -- settings -------------------------------------------------------------------------------------
    def parse(self, value: Any) -> BaseModel | None:
        """Validated settings from what a request carries: A1111's `{"args": [...]}` (positional, in the
        settings' field order), the settings by name, or a settings object. FieldError names the field."""
        if self.settings is None or isinstance(value, self.settings):
            return value if self.settings is not None else None
        # settings A1111 takes at the top level are named there (`hr_upscaler`), the others under alwayson_scripts
        prefix = "" if self.top_level else f"alwayson_scripts.{self.name}"
        if isinstance(value, dict) and set(value) == {"args"}:
            return settings_from(self.settings, value["args"], f"alwayson_scripts.{self.name}.args")
        if not isinstance(value, dict):
            raise FieldError(f"alwayson_scripts.{self.name}", 'must be an object: {"args": [...]} or the settings '
                                                              "by name")
        return settings_from(self.settings, value, prefix)

    def active(self, run: Run) -> bool:
        """Whether the feature takes part in this job: by default when the request carries its settings
        and they do not say `enabled: false`."""
        settings = run.settings_of(self)
        return settings is not None and getattr(settings, "enabled", True)

    def choices(self, field: str, tab: str) -> list[str] | None:
        """The choices a settings field offers in a tab's dropdown when they are known only at run time
        (checkpoints); None = its Param's own."""
        return None

    def check(self, request: GenerationParams, settings: BaseModel) -> None:
        """Refuse (FieldError) settings this request cannot use, at admission rather than mid-job (a
        ControlNet unit without a picture in txt2img)."""
        return None

    def from_infotext(self, parsed: dict[str, Any]) -> dict[str, Any] | None:
        """Its settings from a parsed infotext (paste, "send to"), or None when the infotext has none."""
        if self.settings is None or not infotext_keys(self.settings) & parsed.keys():
            return None
        return values_from_infotext(parsed, self.settings)

    def infotext(self, run: Run) -> dict[str, Any]:
        """The infotext fields this feature adds to every image: its described settings."""
        settings = run.settings_of(self)
        return infotext_params(settings) if settings is not None else {}

    def pass_steps(self, run: Run) -> int:
        """Sampling steps a further pass adds per batch (so progress counts them)."""
        return 0

    # -- the points --------------------------------------------------------------------------------------
    def prepare(self, run: Run) -> None:
        return None

    def before_batch(self, run: Run, batch: Batch) -> None:
        return None

    def unet_inputs(self, step: Step, call: UnetCall) -> None:
        return None

    def guidance(self, step: Step, guidance: Guidance) -> None:
        return None

    def after_step(self, step: Step, latents: torch.Tensor) -> torch.Tensor | None:
        return None

    def further_pass(self, run: Run, batch: Batch, latents: torch.Tensor) -> torch.Tensor | None:
        return None

    def postprocess(self, run: Run, batch: Batch, outputs: list[Output]) -> None:
        return None

    def before_save(self, pending: PendingSave) -> None:
        return None

    def after_save(self, saved: SavedImage) -> None:
        return None


class ScriptContext:
    """What a script may use: generations run through the normal pipeline (every feature applies; a
    request naming another checkpoint gets it from the model manager)."""

    def __init__(self, generate: Callable[[GenerationParams, ProgressSink], GenerationResult], progress: ProgressSink):
        self._generate = generate
        self.progress = progress

    def generate(self, request: GenerationParams, progress: ProgressSink | None = None) -> GenerationResult:
        """One generation; `progress` (default: the job's) receives its steps (webui.generation.progress.
        PartProgress reports them as a part of the whole job)."""
        return self._generate(request, progress or self.progress)


class Script:
    """A whole-job script (A1111's `script_name`): `run` makes the job's result from generations."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    settings: ClassVar[type[BaseModel] | None] = None
    tabs: ClassVar[tuple[str, ...]] = ("txt2img", "img2img")

    def parse(self, value: Any) -> BaseModel | None:
        """Settings from `script_args`: A1111's positional list, or the settings by name."""
        if self.settings is None or isinstance(value, self.settings):
            return value if self.settings is not None else None
        return settings_from(self.settings, value, "script_args")

    def choices(self, field: str, tab: str) -> list[str] | None:
        """A settings field's dropdown choices in a tab, when they depend on it; None = its Param's own."""
        return None

    def check(self, request: GenerationParams, settings: BaseModel | None) -> None:
        """Refuse, at admission and naming the field, what would fail once running (a FieldError)."""
        return None

    def images(self, request: GenerationParams, settings: BaseModel | None) -> int:
        """How many images of the request's size and steps the script makes (for the server's limits)."""
        return request.total_images

    def run(self, context: ScriptContext, request: GenerationParams, settings: BaseModel | None) -> GenerationResult:
        raise TypeError(f"script {self.name!r} does not define run()")


# -- the registry -----------------------------------------------------------------------------------------
class FeatureRegistry:
    """The features and scripts of one Easel, in registration order (built-ins first). Also the store's
    save hooks: `before_save` / `after_save` reach every feature that defines them."""

    def __init__(self) -> None:
        self._features: list[Feature] = []
        self._scripts: list[Script] = []
        self._source: dict[int, str] = {}

    # -- registering ------------------------------------------------------------------------------------
    def add(self, feature: Feature, source: str = "easel") -> Feature:
        return self._add(feature, Feature, self._features, source)

    def add_script(self, script: Script, source: str = "easel") -> Script:
        return self._add(script, Script, self._scripts, source)

    def _add(self, item, kind: type, into: list, source: str):
        if not isinstance(item, kind) or not item.name:
            raise ValueError(f"{item!r} is not a {kind.__name__} with a name")
        if self.find(item.name) is not None or self.find_script(item.name) is not None:
            raise ValueError(f"a feature or script named {item.name!r} is already registered")
        into.append(item)
        self._source[id(item)] = source
        return item

    def remove_source(self, source: str) -> None:
        """Forget everything one extension registered (when it fails half-way through registering)."""
        self._features = [f for f in self._features if self._source.get(id(f)) != source]
        self._scripts = [s for s in self._scripts if self._source.get(id(s)) != source]

    def source_of(self, item: Feature | Script) -> str:
        return self._source.get(id(item), "easel")

    # -- looking up -------------------------------------------------------------------------------------
    @property
    def features(self) -> list[Feature]:
        return list(self._features)

    @property
    def scripts(self) -> list[Script]:
        return list(self._scripts)

    def find(self, name: str) -> Feature | None:
        wanted = name.strip().lower()
        return next((f for f in self._features if f.name.lower() == wanted), None)

    def find_script(self, name: str) -> Script | None:
        wanted = name.strip().lower()
        return next((s for s in self._scripts if s.name.lower() == wanted), None)

    def with_settings(self) -> list[Feature]:
        """Features a request can carry settings for (what `alwayson_scripts` takes)."""
        return [f for f in self._features if f.settings is not None]

    # -- requests -----------------------------------------------------------------------------------------
    def validate(self, request: GenerationParams) -> GenerationParams:
        """The request with its feature settings and script arguments validated into typed settings;
        FieldError names the feature and field (an unknown name lists the known ones)."""
        settings: dict[str, Any] = {}
        for name, value in (request.alwayson_scripts or {}).items():
            feature = self.find(str(name))
            if feature is None or feature.settings is None:
                known = ", ".join(f.name for f in self.with_settings()) or "none"
                raise FieldError(f"alwayson_scripts.{name}", f"no such feature; available: {known}")
            settings[feature.name] = feature.parse(value)
        changes: dict[str, Any] = {"alwayson_scripts": settings}
        if request.script_name:
            script = self.find_script(request.script_name)
            if script is None:
                known = ", ".join(s.name for s in self._scripts) or "none"
                raise FieldError("script_name", f"no script {request.script_name!r}; available: {known}")
            changes["script_name"] = script.name
            changes["script_args"] = script.parse(request.script_args)
        validated = request.model_copy(update=changes)
        for name, value in settings.items():
            self.find(name).check(validated, value)
        if request.script_name:
            script.check(validated, changes["script_args"])
        return validated

    def settings_from_infotext(self, parsed: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """{feature name: settings values} for the features whose settings a parsed infotext holds."""
        out = {}
        for feature in self.with_settings():
            values = feature.from_infotext(parsed)
            if values is not None:
                out[feature.name] = values
        return out

    def top_level_settings(self, fields: dict[str, Any], tab: str) -> dict[str, dict[str, Any]]:
        """{feature name: settings} taken from the top level of an A1111 request body (`enable_hr`, `styles`)
        for the features that take them there; a feature with none of its fields given is left out."""
        out = {}
        for feature in self.with_settings():
            if feature.top_level and tab in feature.tabs:
                given = {k: fields[k] for k in feature.settings.model_fields if k in fields}
                if given:
                    out[feature.name] = given
        return out

    # -- the store's hooks --------------------------------------------------------------------------------
    def before_save(self, pending: PendingSave) -> None:
        for feature in self._hooked("before_save"):
            feature.before_save(pending)

    def after_save(self, saved: SavedImage) -> None:
        for feature in self._hooked("after_save"):
            try:
                feature.after_save(saved)
            except Exception:  # one listener's bug must not hide the event from the others
                log.exception("feature %s failed in after_save for %s", feature.name, saved.path)

    def _hooked(self, hook: str) -> Iterable[Feature]:
        return [f for f in self._features if getattr(type(f), hook) is not getattr(Feature, hook)]
