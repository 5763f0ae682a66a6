"""The one way in: every job, from the page, `/sdapi/v1`, `/easel/v1`, the outpaint canvas and the zoom,
is admitted here before it reaches the queue.

`Admission.submit(kind, request, caller)`:

1. resolves the checkpoint and VAE: the request's own, else this request's `override_settings`, else
   the caller's options, else the checkpoint Easel started with (never "whatever someone else loaded
   last"); names resolve only through the listings, never as paths;
2. applies the caller's options (clip skip, and extensions' options, which reach the features as
   `run.options`);
3. validates the per-feature settings and the script through the feature registry;
4. enforces the server's limits (`--max-steps`, `--max-pixels`, `--max-batch`, `--max-zoom-keyframes`,
   `--max-job-work`), each refusal naming the field and the limit;
5. queues the job under the caller's name (the owner fairness and visibility go by).

Refusals are `FieldError`s (a ValueError whose text starts with the field): the API answers 422, the
page shows the message.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import BaseModel, ValidationError

from webui.features.extras import ExtrasRequest, pictures_in
from webui.features.travel import TravelRequest
from webui.generation.builtins import img2img_size
from webui.generation.errors import FieldError
from webui.generation.requests import GenerationParams, Img2ImgRequest
from webui.generation.zoom import ZoomRequest
from webui.jobs.queue import Job
from webui.training.textual_inversion import (NAME, Dataset, TrainEmbeddingRequest, embedding_file, learning_rates,
                                              templates)
from webui.models.catalog import CheckpointInfo
from webui.models.embeddings import SUFFIXES as EMBEDDING_SUFFIXES
from webui.models.errors import CheckpointNotFound, LoraNotFound, ModelError
from webui.models.merge import ADD_DIFFERENCE, NO_INTERPOLATION, MergeRecipe, MergeRequest, canonical_method
from webui.models.lora import extract_lora_tags
from webui.models.vae import AUTOMATIC, NONE
from webui.options import CoreOptions, OptionsStore
from webui.services import Easel
from webui.settings import Limits

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_PLAIN_NAME = re.compile(r"[\w][\w .\-]{0,150}")


@dataclass(frozen=True)
class Caller:
    """Who submits: the queue owner every job of theirs gets, the signed-in user, whether an admin."""

    owner: str
    user: str | None = None
    admin: bool = False
    manager: bool = False  # may change what everyone shares (rescan models, edit styles, switch extensions):
    #                        an admin, or anyone when logins are off (as in A1111)

    def may_see(self, job: Job) -> bool:
        return self.admin or job.owner == self.owner


@dataclass
class Admitted:
    """A queued job and what was decided for it."""

    job: Job
    request: Any  # the request as it will run (checkpoint, VAE, options and settings resolved)
    checkpoint: CheckpointInfo | None
    ignored: list[str] = field(default_factory=list)  # override_settings keys Easel does not use
    work: float = 1.0  # megapixel-steps: what the queue's fairness counts


def looks_like_path(name: str) -> bool:
    """A name that tries to step out of the model folders: absolute, drive-rooted or with `..`."""
    parts = re.split(r"[\\/]", name)
    return (name.startswith(("/", "\\")) or bool(_WINDOWS_DRIVE.match(name)) or ".." in parts
            or "\x00" in name or name.startswith("~"))


def validation_field_error(err: ValidationError, prefix: str = "") -> FieldError:
    """The first problem of a pydantic error as a FieldError naming its field."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e.get("loc", ()))
    return FieldError(".".join(p for p in (prefix, loc) if p) or "body", e["msg"].removeprefix("Value error, "))


class Admission:
    def __init__(self, easel: Easel, limits: Limits | None = None):
        self.easel = easel
        self.limits = limits if limits is not None else easel.settings.limits
        self.options = OptionsStore(easel.options)
        # Requests that name no checkpoint get the one Easel started with, not whatever another
        # user's job loaded last: the same request gives the same image whoever ran before it.
        start = easel.manager.default_checkpoint()
        self.start_checkpoint = start.name if start is not None else None

    # -- names ------------------------------------------------------------------------------------
    def resolve_checkpoint(self, name: str | None, field_name: str = "checkpoint") -> CheckpointInfo:
        """A checkpoint from the catalog only; a name is never used as a path."""
        if name is not None and looks_like_path(name.strip()):
            raise FieldError(field_name, "must be a checkpoint title, name or hash from /sdapi/v1/sd-models, "
                                         "not a file path")
        manager = self.easel.manager
        try:
            if name and name.strip():
                return manager.resolve(name.strip())
            try:
                return manager.resolve(self.start_checkpoint)
            except CheckpointNotFound:  # gone since start (or there was none): the manager's default
                return manager.resolve(None)
        except CheckpointNotFound as e:
            raise FieldError(field_name, str(e)) from None

    def resolve_vae(self, name: str | None, field_name: str = "vae") -> str:
        """"Automatic", "None" or the name of a file listed in models/VAE; never a path."""
        choice = (name or AUTOMATIC).strip()
        if choice.lower() in (AUTOMATIC.lower(), NONE.lower()):
            return AUTOMATIC if choice.lower() == AUTOMATIC.lower() else NONE
        if looks_like_path(choice):
            raise FieldError(field_name, "must be a VAE model_name from /sdapi/v1/sd-vae, not a file path")
        files = self.easel.vaes.files()
        for f in files:  # names resolve only through the listing
            if choice in (f.name, f.path.name, f.path.stem):
                return f.name
        raise FieldError(field_name, f"no VAE {choice!r} in models/VAE; choose one of: "
                                     f"{', '.join([AUTOMATIC, NONE] + [f.name for f in files])}")

    # -- options ----------------------------------------------------------------------------------
    def options_of(self, owner: str) -> BaseModel:
        return self.options.get(owner)

    def options_view(self, owner: str) -> dict[str, Any]:
        options = self.options.get(owner)
        try:
            info = self.resolve_checkpoint(options.sd_model_checkpoint, "sd_model_checkpoint")
        except FieldError:
            info = None
        view = options.model_dump()
        view["sd_model_checkpoint"] = info.title if info else options.sd_model_checkpoint
        view["sd_checkpoint_hash"] = info.sha256 if info else None
        return view

    def set_options(self, caller: Caller, changes: dict[str, Any], timeout: float | None = None) -> tuple[list[str], list[str]]:
        """Validate and store the known keys: (updated, ignored). A new checkpoint is loaded first, as a
        job of the caller's (A1111 loads it when the option is set); if it cannot be loaded the error
        names `sd_model_checkpoint` and the previous choice stays."""
        model = self.easel.options.model
        known = {k: v for k, v in changes.items() if k in model.model_fields and v is not None}
        ignored = sorted(k for k in changes if k not in model.model_fields)
        current = self.options.get(caller.owner)
        try:
            updated = model.model_validate(current.model_dump() | known)
        except ValidationError as e:
            raise validation_field_error(e) from None
        if "sd_vae" in known:
            updated.sd_vae = self.resolve_vae(updated.sd_vae, "sd_vae")
        if "sd_model_checkpoint" in known:
            info = self.resolve_checkpoint(updated.sd_model_checkpoint, "sd_model_checkpoint")
            if info.name != self._option_checkpoint(current):
                job = self.easel.submit("load", info.name, caller.owner)
                job.wait(timeout)
                if not job.finished_ok:
                    raise FieldError("sd_model_checkpoint", f"could not be loaded, the previous choice stays: "
                                                            f"{job.error or 'interrupted'}")
            updated.sd_model_checkpoint = info.title
        self.options.put(caller.owner, updated)
        return sorted(known), ignored

    def _option_checkpoint(self, options: BaseModel) -> str | None:
        try:
            return self.resolve_checkpoint(options.sd_model_checkpoint, "sd_model_checkpoint").name
        except FieldError:
            return None

    def _overrides(self, request: Any) -> dict[str, Any]:
        """The request's override_settings that are options, validated (errors name the key)."""
        model = self.easel.options.model
        given = getattr(request, "override_settings", {}) or {}
        known = {k: v for k, v in given.items() if k in model.model_fields and v is not None}
        try:
            model.model_validate(known)
        except ValidationError as e:
            raise validation_field_error(e, "override_settings") from None
        return known

    # -- admitting --------------------------------------------------------------------------------
    def prepare(self, kind: str, request: Any, caller: Caller) -> Admitted:
        """The request as it will run, checked; nothing is queued (see `submit`)."""
        if kind == "load":
            info = self.resolve_checkpoint(request, "sd_model_checkpoint")
            return Admitted(None, info.name, info)  # type: ignore[arg-type]
        if kind == "extras":
            return self.prepare_extras(request, caller)
        if kind == "merge":
            return self.prepare_merge(request, caller)
        if kind == "create_embedding":
            taken = [path for s in EMBEDDING_SUFFIXES
                     if (path := self.easel.settings.models_dir / "embeddings" / f"{request.name}{s}").exists()]
            if taken and not request.overwrite_old:
                raise FieldError("name", f"{taken[0].name} exists (set overwrite_old to replace it)")
            return Admitted(None, request, None, [], 0.0)  # type: ignore[arg-type]
        if kind == "train":
            return self.prepare_train(request, caller)
        options = self.options.get(caller.owner)
        overrides = self._overrides(request)
        info = self.resolve_checkpoint(*_pick(request.checkpoint, "checkpoint", overrides, "sd_model_checkpoint",
                                              options.sd_model_checkpoint, "sd_model_checkpoint"))
        changes: dict[str, Any] = {
            "checkpoint": info.name,
            "vae": self.resolve_vae(*_pick(request.vae, "vae", overrides, "sd_vae", options.sd_vae, "sd_vae")),
        }
        if "clip_skip" not in request.model_fields_set:
            changes["clip_skip"] = overrides.get("CLIP_stop_at_last_layers", options.CLIP_stop_at_last_layers)
        extension_options = {k: getattr(options, k) for k in self.easel.options.extension_keys}
        changes["override_settings"] = extension_options | {k: v for k, v in overrides.items()
                                                            if k not in CoreOptions.model_fields}
        resolved = self.easel.features.validate(request.model_copy(update=changes))
        self.check_loras(resolved)
        if isinstance(resolved, TravelRequest):
            resolved = resolved.model_copy(update={"upscaler": self.upscaler(resolved.upscaler, "upscaler")})
            if resolved.resume:  # an earlier job's frames, the caller's own
                self.easel.travel_folder(resolved.resume, caller.owner)
        work = self.check_limits(kind, resolved, info)
        ignored = sorted(k for k in (getattr(request, "override_settings", {}) or {})
                         if k not in self.easel.options.model.model_fields)
        return Admitted(None, resolved, info, ignored, work)  # type: ignore[arg-type]

    def submit(self, kind: str, request: Any, caller: Caller, *, save: bool = True) -> Admitted:
        """Check `request` and queue it as the caller's job of `kind` ("txt2img", "img2img", "outpaint",
        "zoom", or "load" with a checkpoint name as the request). FieldError when it is refused."""
        admitted = self.prepare(kind, request, caller)
        admitted.job = self.easel.submit(kind, admitted.request, caller.owner, save, work=admitted.work)
        return admitted

    def prepare_extras(self, request: ExtrasRequest, caller: Caller) -> Admitted:
        """Upscaler names resolved, a server folder checked (admins; allowed folders only), the number of
        pictures within --max-batch."""
        changes: dict[str, Any] = {"upscaler_1": self.upscaler(request.upscaler_1, "upscaler_1"),
                                   "upscaler_2": self.upscaler(request.upscaler_2, "upscaler_2")}
        if request.folder:
            if not caller.manager:
                raise FieldError("folder", "reading a folder on the server is an admin's action")
            changes["images"] = pictures_in(self.easel.extras_folder(request.folder))
        resolved = request.model_copy(update=changes)
        if not resolved.images:
            raise FieldError("images" if not request.folder else "folder", "no picture to process")
        limit = self.limits.max_batch
        if limit is not None and len(resolved.images) > limit:
            raise FieldError("images", f"at most {limit} pictures per job on this server (got {len(resolved.images)})")
        work = sum(_pixels(image) for image in resolved.images) * resolved.upscaling_resize ** 2 / 1e6
        return Admitted(None, resolved, None, [], work)  # type: ignore[arg-type]

    def prepare_train(self, request: TrainEmbeddingRequest, caller: Caller) -> Admitted:
        """The embedding must exist (.pt or .safetensors); the pictures are a folder in an allowed place (the
        data folder or an --extras-folder one) or, when `data_root` is empty, the pictures sent in `images`
        (the page's uploads come this way), at least two readable ones either way; the schedule and template
        must read. The job gets the decoded dataset, not the base64."""
        folder = self.easel.settings.models_dir / "embeddings"
        if not NAME.fullmatch(request.embedding_name) or embedding_file(folder, request.embedding_name) is None:
            raise FieldError("embedding_name", f"no embedding {request.embedding_name!r} in models/embeddings "
                                               "(create it first)")
        if request.data_root and request.images:
            raise FieldError("images", "send pictures or name a folder in data_root, not both")
        if not request.data_root and not request.images:
            raise FieldError("data_root", "name a folder of pictures (or send the pictures in images)")
        learning_rates(request.learn_rate, request.steps)
        templates(request.template_filename)
        if request.data_root:
            try:
                pictures = self.easel.extras_folder(request.data_root)
            except FieldError as e:
                raise FieldError("data_root", e.message) from None
            dataset = Dataset.from_folder(pictures, request.training_width, request.training_height)
        else:
            dataset = Dataset.from_sent(request.images, request.captions, request.training_width,
                                        request.training_height)
            request = request.model_copy(update={"images": [], "captions": []})
        work = request.steps * request.batch_size * request.training_width * request.training_height / 1e6
        return Admitted(None, (request, dataset), None, [], work)  # type: ignore[arg-type]

    def prepare_merge(self, request: MergeRequest, caller: Caller) -> Admitted:
        """The checkpoints resolved through the listing, the new file's name checked (a plain name, not
        taken), the VAE found; an admin's action when logins are on (it writes into the model folder)."""
        if not caller.manager:
            raise FieldError("name", "merging checkpoints (writing into the model folder) is an admin's action")
        try:
            method = canonical_method(request.method)
        except ModelError as e:
            raise FieldError("method", str(e)) from None
        a = self.resolve_checkpoint(request.primary, "primary")
        b = self.resolve_checkpoint(request.secondary, "secondary") if method != NO_INTERPOLATION else None
        c = self.resolve_checkpoint(request.tertiary, "tertiary") if method == ADD_DIFFERENCE else None
        name = request.name.strip() or "_".join(
            [a.model_name] + ([f"{b.model_name}_{round(request.multiplier, 2)}"] if b else []))
        name = name.removesuffix(".safetensors")
        if not _PLAIN_NAME.fullmatch(name):
            raise FieldError("name", "use letters, digits, spaces and ._- only (no folders)")
        output = self.easel.settings.checkpoint_dirs[0] / f"{name}.safetensors"
        if output.exists():
            raise FieldError("name", f"{output.name} already exists; choose another name")
        vae = None
        if request.bake_vae and request.bake_vae not in (AUTOMATIC, NONE):
            try:
                vae = self.easel.vaes.resolve(request.bake_vae, a.path)
            except ModelError as e:
                raise FieldError("bake_vae", str(e)) from None
        recipe = MergeRecipe(a.path, b.path if b else None, c.path if c else None, method, request.multiplier,
                             request.fp16, vae.path if vae else None,
                             tuple(p.strip() for p in request.discard.split(",") if p.strip()))
        return Admitted(None, (recipe, output), a, [], 0.0)  # type: ignore[arg-type]

    def upscaler(self, name: str, field: str) -> str:
        """An upscaler's own name (GET /sdapi/v1/upscalers lists them); FieldError naming `field` if none."""
        try:
            return self.easel.upscalers.resolve(name)
        except ModelError as e:
            raise FieldError(field, str(e)) from None

    def check_loras(self, request: GenerationParams) -> None:
        """Every `<lora:…>` tag written in the prompts names a file in models/Lora (FieldError naming the
        prompt field); tags a feature writes later (a wildcard, a style) are checked when the job runs."""
        loras = self.easel.engine.loras
        texts = {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
        for key, text in (getattr(request, "prompts", None) or {}).items():  # a zoom's keyed prompts
            texts[f"prompts.{key}"] = text
        if isinstance(request, TravelRequest):
            for index, keyframe in enumerate(request.keyframes):
                texts[f"keyframes.{index}.prompt"] = keyframe.prompt
        for name, text in texts.items():
            for use in extract_lora_tags(text, name)[1]:
                if loras is None:
                    raise FieldError(name, "this server has no LoRA folder")
                try:
                    loras.find(use.name, hashed=False)
                except LoraNotFound as e:
                    raise FieldError(name, str(e)) from None

    # -- limits -----------------------------------------------------------------------------------
    def run_size(self, request: GenerationParams, info: CheckpointInfo) -> tuple[int, int]:
        """The size the request will run at: its own, the init image's, or the checkpoint's."""
        if isinstance(request, Img2ImgRequest):
            return img2img_size(request, request.init_image)
        if request.width and request.height:
            return request.width, request.height
        default = self.easel.default_size_for(info.name)
        if isinstance(request, ZoomRequest):
            default = tuple(min(512, s) for s in default)
        return request.width or default[0], request.height or default[1]

    def check_limits(self, kind: str, request: GenerationParams, info: CheckpointInfo) -> float:
        """Refuse a request over this server's limits (FieldError); else its work in megapixel-steps."""
        limits = self.limits
        if limits.max_steps is not None and request.steps > limits.max_steps:
            raise FieldError("steps", f"at most {limits.max_steps} on this server (got {request.steps})")
        images = request.total_images
        script = self.easel.features.find_script(request.script_name) if request.script_name else None
        if script is not None:  # an X/Y/Z plot makes one image per cell
            images = script.images(request, request.script_args)
        if limits.max_batch is not None and images > limits.max_batch:
            what = f"{script.title or script.name} makes {images}" if script is not None else \
                f"got {request.batch_size} × {request.n_iter}"
            raise FieldError("script_args" if script is not None else "n_iter",
                             f"batch_size × n_iter is at most {limits.max_batch} images on this server ({what})")
        width, height = self.run_size(request, info)
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            given = request.width and request.height and not isinstance(request, Img2ImgRequest)
            source = "" if given else " (the size it would run at: width/height were not given)"
            raise FieldError("width", f"width × height is at most {limits.max_pixels} pixels on this server; it "
                                      f"would be {width}x{height}{source}")
        if isinstance(request, ZoomRequest):
            if limits.max_zoom_keyframes is not None and request.keyframes > limits.max_zoom_keyframes:
                raise FieldError("keyframes", f"at most {limits.max_zoom_keyframes} on this server "
                                              f"(got {request.keyframes})")
            images = request.keyframes + 1
        if isinstance(request, TravelRequest):
            images = request.total_frames
            if limits.max_travel_frames is not None and images > limits.max_travel_frames:
                raise FieldError("frames", f"a travel video has at most {limits.max_travel_frames} frames on this "
                                           f"server (these keyframes and frame counts make {images})")
        work = images * request.steps * width * height / 1e6
        if limits.max_job_work is not None and work > limits.max_job_work:
            what = {ZoomRequest: "keyframes", TravelRequest: "frames"}.get(type(request), "n_iter")
            raise FieldError(what, f"this job is {work:,.0f} megapixel-steps (images × steps × width × height "
                                   f"/ 10⁶); this server takes at most {limits.max_job_work:,.0f} per job")
        return work

    # -- seeing jobs ------------------------------------------------------------------------------
    def visible_job(self, job_id: str, caller: Caller) -> Job | None:
        """A job the caller may see (their own; any for an admin), else None."""
        job = self.easel.queue.get(job_id)
        return job if job is not None and caller.may_see(job) else None


def _pixels(image: Any) -> int:
    """Pixels of a picture (or of a file's, from its header)."""
    if isinstance(image, Image.Image):
        return image.width * image.height
    try:
        with Image.open(image) as opened:
            return opened.width * opened.height
    except OSError:
        return 0


def _pick(value, field: str, overrides: dict, key: str, option, option_field: str) -> tuple[Any, str]:
    """(value, the field an error should name): the request's own field, then its
    override_settings[key], then the caller's option."""
    if value:
        return value, field
    if overrides.get(key):
        return overrides[key], f"override_settings.{key}"
    return option, option_field
