"""The API's request and response models, derived from the job request types.

`ApiTxt2ImgRequest` *is* a `Txt2ImgRequest` (same fields, defaults, limits and validators, including
`alwayson_scripts`, `script_name`/`script_args` and `override_settings`) plus the A1111 fields that
only matter over HTTP: `save_images`, `send_images`, `sampler_index`. Anything else an A1111 client
sends (`enable_hr`, `restore_faces`, …) is accepted, kept in `model_extra`, echoed in `parameters`
and named in the `info` as ignored, never silently treated as applied. `null` means "the default",
as A1111 clients send it.

`ApiImg2ImgRequest` is `Img2ImgRequest`'s fields minus its two PIL images (`init_image`, `mask`),
which arrive instead as A1111's base64 `init_images` (the first is used) and `mask`; `core()` decodes
them and builds the real `Img2ImgRequest`, so the engine's own validation runs again there.
"""
from __future__ import annotations

from abc import abstractmethod

from copy import copy
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from webui.generation.extension_points import FeatureRegistry
from webui.generation.requests import GenerationParams, Img2ImgRequest, Txt2ImgRequest
from webui.jobs.queue import JobState

from .errors import InvalidFields
from .images import decode_image

# -- requests --------------------------------------------------------------------------------------


ECHO_LIMIT = 16 * 1024


def _json_size(value: Any, limit: int) -> int:
    """The JSON size of a value, counted only up to a little over `limit` (a huge list is not serialised)."""
    size, stack = 0, [value]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
            size += 2
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
            size += 2
        else:
            size += len(str(item)) + 3
    return size


class JsonSafe(BaseModel):
    """A body model of Easel's API. What cannot be echoed back as JSON or written into a PNG (NaN,
    Infinity, lone surrogates) is refused before validation, off the event loop (EaselRoute)."""


class A1111Fields(JsonSafe):
    """The A1111 API fields that are about the HTTP call rather than the image."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    sampler_index: str | None = Field(None, description="A1111's old name for sampler_name; used only when "
                                                        "sampler_name is not given")
    override_settings_restore_afterwards: bool = Field(True, description="always effectively true in Easel")
    save_images: bool = Field(False, description="also write the PNGs to outputs/ (A1111's API default: false)")
    send_images: bool = Field(True, description="return the images in the response")

    @model_validator(mode="before")
    @classmethod
    def _a1111_conventions(cls, data: Any) -> Any:
        """null = the default; `sampler_index` stands in for a missing `sampler_name`."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items()
                if not (v is None and k in cls.model_fields and cls.model_fields[k].default is not None)}
        if "sampler_name" not in data and isinstance(data.get("sampler_index"), str):
            data["sampler_name"] = data["sampler_index"]
        return data

    # extra A1111 fields whose only value Easel acts on is this one (given it, they are no request)
    _APPLIED_EXTRAS: ClassVar[dict[str, Any]] = {}

    def ignored_fields(self, features: FeatureRegistry | None = None) -> list[str]:
        """Extra A1111 fields given a value Easel does not act on (false/empty/-1/0 are no request); the
        ones a feature takes at the top level are acted on."""
        taken = {k for f in (features.with_settings() if features else []) if f.top_level
                 for k in f.settings.model_fields}
        ignored = []
        for k, v in (self.model_extra or {}).items():
            if k in taken:
                continue
            if k in self._APPLIED_EXTRAS:
                if v is not None and v != self._APPLIED_EXTRAS[k]:
                    ignored.append(k)
            elif v not in (None, False, "", [], {}, -1, 0):
                ignored.append(k)
        return sorted(ignored)

    def echo(self, exclude: set[str] | None = None) -> dict[str, Any]:
        """The request as the response's `parameters` shows it; a field Easel does not know that is larger
        than ECHO_LIMIT is summarised, not sent back (an unknown field is echoed, not a megabyte of it)."""
        extras = set(self.model_extra or {})
        shown = self.model_dump(mode="json", exclude=(exclude or set()) | extras)
        for key in extras:
            value = self.model_extra[key]
            size = _json_size(value, ECHO_LIMIT)
            shown[key] = value if size <= ECHO_LIMIT else f"<not echoed: over {ECHO_LIMIT} bytes of JSON>"
        return shown


class ApiGenerationRequest(GenerationParams, A1111Fields):
    """What every generation route takes: a job request's fields plus A1111's HTTP-only ones."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @abstractmethod
    def core(self, features: FeatureRegistry | None = None) -> GenerationParams:
        """The plain job request (validated again by its own type); with the feature registry, the A1111
        fields some features take at the top level (`enable_hr`, `styles`, …) go to their settings."""

    def feature_fields(self, features: FeatureRegistry | None, tab: str) -> dict[str, Any]:
        """`alwayson_scripts` with the top-level settings added (what the body names explicitly wins)."""
        scripts = dict(self.alwayson_scripts or {})
        if features is not None:
            for name, given in features.top_level_settings(dict(self.model_extra or {}), tab).items():
                scripts.setdefault(name, given)
        return scripts


class ApiTxt2ImgRequest(Txt2ImgRequest, ApiGenerationRequest):
    """POST /sdapi/v1/txt2img: Easel's txt2img request in A1111's dialect."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    def core(self, features: FeatureRegistry | None = None) -> Txt2ImgRequest:
        """The plain job request the engine runs (validated again)."""
        fields = {name: getattr(self, name) for name in Txt2ImgRequest.model_fields if name in self.model_fields_set}
        fields["alwayson_scripts"] = self.feature_fields(features, "txt2img")
        try:
            return Txt2ImgRequest.model_validate(fields)
        except ValidationError as e:
            raise InvalidFields(e.errors(), prefix=("body",)) from None


class EaselTxt2ImgJob(ApiTxt2ImgRequest):
    """POST /easel/v1/jobs: the same request, queued instead of waited for."""

    kind: Literal["txt2img"] = Field("txt2img", description="the job type (the default)")


_PIL_FIELDS = ("init_image", "mask")

Img2ImgParams = create_model(  # Img2ImgRequest's own fields (same types, defaults, limits), minus the PIL images
    "Img2ImgParams",
    __base__=GenerationParams,
    __doc__="img2img's parameters beside the images",
    **{name: (f.annotation, copy(f)) for name, f in Img2ImgRequest.model_fields.items()
       if name not in GenerationParams.model_fields and name not in _PIL_FIELDS},
)
_IMAGE_LOCS = {"init_image": "init_images", "mask": "mask"}


class ApiImg2ImgRequest(Img2ImgParams, ApiGenerationRequest):  # type: ignore[misc,valid-type]
    """POST /sdapi/v1/img2img: Easel's img2img (and inpainting, with a mask) in A1111's dialect."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    init_images: list[str] = Field(min_length=1, description=(
        "base64 images (data: URLs too; URLs are not fetched). The first is used, for every image of the "
        "batch, as A1111 does"))
    mask: str | None = Field(None, description="base64 mask, white = regenerate; empty = no mask (img2img)")
    include_init_images: bool = Field(False, description="echo init_images and mask in `parameters`")

    # A1111's fields whose value Easel always applies: only another value is "ignored"
    _APPLIED_EXTRAS: ClassVar[dict[str, Any]] = {"mask_round": True, "initial_noise_multiplier": 1.0}

    def ignored_fields(self, features: FeatureRegistry | None = None) -> list[str]:
        extra = ["init_images[1:]"] if len(self.init_images) > 1 else []
        return sorted(super().ignored_fields(features) + extra)

    def echo(self, exclude: set[str] | None = None) -> dict[str, Any]:
        if self.include_init_images:
            return super().echo(exclude)
        return super().echo({"init_images", "mask"} | (exclude or set())) | {"init_images": None, "mask": None}

    def images(self) -> tuple[Any, Any]:
        """The first init image and the mask (or None), decoded; 422 naming the field when either is not an
        image Easel can read."""
        init = _load(self.init_images[0], "init_images")
        mask = _load(self.mask, "mask") if self.mask and self.mask.strip() else None
        return init, mask

    def core(self, features: FeatureRegistry | None = None) -> Img2ImgRequest:
        """The plain job request the engine runs, images decoded (validated again: an empty mask is
        refused here, before the job is queued)."""
        init, mask = self.images()
        fields = {name: getattr(self, name) for name in Img2ImgRequest.model_fields
                  if name not in _PIL_FIELDS and name in self.model_fields_set}
        fields["alwayson_scripts"] = self.feature_fields(features, "img2img")
        try:
            return Img2ImgRequest.model_validate(fields | {"init_image": init, "mask": mask})
        except ValidationError as e:
            errors = [{**err, "loc": tuple(_IMAGE_LOCS.get(str(p), p) for p in err.get("loc", ()))}
                      for err in e.errors()]
            raise InvalidFields(errors, prefix=("body",)) from None


def _load(value: str, field: str) -> Any:
    return decode_image(value, field)


class EaselImg2ImgJob(ApiImg2ImgRequest):
    """POST /easel/v1/jobs with `"kind": "img2img"`: the img2img request, queued instead of waited for."""

    kind: Literal["img2img"] = Field(description="the job type")


EASEL_JOB_KINDS: dict[str, type[ApiGenerationRequest]] = {"txt2img": EaselTxt2ImgJob, "img2img": EaselImg2ImgJob}


class OptionsUpdateBase(JsonSafe):
    """POST /sdapi/v1/options: every option optional; unknown keys are accepted and reported as ignored."""

    model_config = ConfigDict(extra="allow")


class PngInfoRequest(JsonSafe):
    image: str = Field(description="base64 PNG (or data: URL); URLs are not fetched")


# -- responses -------------------------------------------------------------------------------------


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs, each with its infotext in the `parameters` chunk")
    parameters: dict[str, Any] = Field(description="the request as Easel read it, defaults filled in")
    info: str = Field(description="JSON: A1111's processing info (seeds, model, infotexts, …)")


class ExtensionItem(BaseModel):
    name: str
    remote: str | None = None
    branch: str | None = None
    commit_hash: str | None = None
    version: str | None = None
    commit_date: int | None = None
    enabled: bool
    state: str = Field(description="enabled, disabled (switched off) or failed (could not be loaded)")
    reason: str = ""
    features: list[str] = Field(default_factory=list, description="the features and scripts it registered")


class StyleItem(BaseModel):
    name: str
    prompt: str
    negative_prompt: str


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = Field(None, description="the folder (ESRGAN, RealESRGAN, SwinIR, …)")
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = Field(None, description="as the file's name states it (4x-…, …_x2…)")
    available: bool = True
    problem: str | None = Field(None, description="why a model upscaler cannot be used here")


class ScriptList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class ScriptArg(BaseModel):
    label: str
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None


class ScriptInfo(BaseModel):
    name: str
    is_alwayson: bool
    is_img2img: bool
    args: list[ScriptArg]


class OptionsUpdated(BaseModel):
    updated: list[str]
    ignored: list[str] = Field(description="keys Easel does not use")


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class VaeItem(BaseModel):
    model_name: str = Field(description="the name to use in sd_vae / vae")
    filename: str


class LoraItem(BaseModel):
    name: str = Field(description="the name to use in <lora:name:weight>")
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int | None = Field(None, description="vector width (SDXL: clip_l + clip_g)")
    vectors: int = 0


class SkippedEmbedding(EmbeddingItem):
    error: str = Field(description="why the file could not be used")


class Embeddings(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(default_factory=dict)
    skipped: dict[str, SkippedEmbedding] = Field(default_factory=dict)


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = Field(0, description="the caller's unfinished jobs")
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    job_id: str | None = None
    queue_position: int = Field(0, description="0 = running or idle, 1 = next, …")
    stage: str = ""


class ProgressResponse(BaseModel):
    progress: float = Field(0.0, description="0..1 of the caller's current job")
    eta_relative: float = 0.0
    state: ProgressState = Field(default_factory=ProgressState)
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class InterruptResponse(BaseModel):
    interrupted: list[str] = Field(description="ids of the jobs told to stop")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class MemoryResponse(BaseModel):
    ram: dict[str, float]
    cuda: dict[str, Any]


class JobSubmitted(BaseModel):
    id: str
    state: JobState
    position: int
    url: str


class JobView(BaseModel):
    """What every JSON view of a job shows (webui.api.results.job_fields)."""

    id: str
    state: JobState
    stage: str
    progress: float
    eta_seconds: float | None = None
    position: int = Field(description="0 = running or finished, 1 = next, …")
    step: int
    total_steps: int
    error: str | None = None
    interrupted: bool = False
    text: str = Field("", description="progress in words")
    worker: str | None = Field(None, description="the worker running it, or that ran it ('local' in-process)")


class VideoInfo(BaseModel):
    """A finished video job (infinite zoom, prompt travel)."""

    url: str | None = Field(None, description="where to fetch the mp4; None when no frame was made")
    frames: int
    fps: int
    size: tuple[int, int]
    interrupted: bool
    folder: str | None = Field(None, description="prompt travel: the frames' folder (what `resume` takes)")
    resumed: int = Field(0, description="prompt travel: frames kept from the job resumed")


class JobStatus(JobView):
    kind: str
    owner: str
    created: float
    started: float | None = None
    finished: float | None = None
    images: list[str] | None = Field(None, description="base64 PNGs once the job has finished (prompt travel "
                                                       "with keyframes_only: the keyframes' stills)")
    info: dict[str, Any] | None = Field(None, description="as in /sdapi/v1/txt2img and img2img, once finished")
    video: VideoInfo | None = Field(None, description="a video job's mp4, once finished")


class WorkerStatus(BaseModel):
    id: str = Field(description="'local' for this process's own worker; 'ray-N' for Ray workers")
    device: str
    models: list[str] = Field(description="the checkpoints it holds, by name")
    current_job: str | None = None
    jobs_done: int
    errors: int
    alive: bool = True


class WorkerList(BaseModel):
    workers: list[WorkerStatus]


class JobList(BaseModel):
    jobs: list[JobStatus]
