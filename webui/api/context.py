"""What every API route shares: the Easel services, who is calling, their options, and the limits.

One `ApiContext` is built per app (in `build_api_router`) and closed over by the routes; nothing
here is module-level state. The caller is the signed-in user when auth is on (the same owner name
the web UI uses, so one person's UI and API jobs share one fair turn), otherwise the API client:
its `X-Easel-Client` header, or its address.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

from fastapi import Header, Request
from pydantic import ValidationError

from webui.auth import ANONYMOUS, Gate
from webui.generation.engine import img2img_size
from webui.generation.requests import GenerationParams, Img2ImgRequest
from webui.jobs.queue import Job
from webui.models.catalog import CheckpointInfo
from webui.models.errors import CheckpointNotFound
from webui.models.vae import AUTOMATIC, NONE
from webui.services import Easel

from .errors import ApiError, InvalidFields, field_error
from .schemas import ApiGenerationRequest, ApiOptions

SubmitJob = Callable[[Any, str, bool], Job]  # Easel.submit_txt2img(request, owner, save) and its siblings
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Caller:
    owner: str  # the queue owner every job of this caller gets
    user: str | None = None  # the signed-in user, when auth is on
    admin: bool = False

    def may_see(self, job: Job) -> bool:
        return self.admin or job.owner == self.owner


@dataclass(frozen=True)
class ApiLimits:
    """Caps a shared instance may put on one request (None = only the request types' own limits)."""

    max_steps: int | None = None
    max_pixels: int | None = None  # width * height
    max_images: int | None = None  # batch_size * n_iter
    max_body_bytes: int = 256 * 1024 * 1024  # a request body over this is refused (413) before it is read


@dataclass
class Submission:
    """A queued API job with what the response needs to describe it."""

    job: Job
    body: ApiGenerationRequest
    checkpoint: CheckpointInfo
    ignored: list[str] = field(default_factory=list)


class OptionsStore:
    """Each owner's options; the least recently used are forgotten beyond `capacity`."""

    def __init__(self, capacity: int = 1000):
        self._lock = threading.Lock()
        self._items: OrderedDict[str, ApiOptions] = OrderedDict()
        self._capacity = capacity

    def get(self, owner: str) -> ApiOptions:
        with self._lock:
            options = self._items.get(owner)
            if options is not None:
                self._items.move_to_end(owner)
            return options.model_copy() if options is not None else ApiOptions()

    def put(self, owner: str, options: ApiOptions) -> None:
        with self._lock:
            self._items[owner] = options
            self._items.move_to_end(owner)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


def looks_like_path(name: str) -> bool:
    """A name that tries to step out of the checkpoint folders: absolute, drive-rooted or with `..`."""
    parts = re.split(r"[\\/]", name)
    return (name.startswith(("/", "\\")) or bool(_WINDOWS_DRIVE.match(name)) or ".." in parts
            or "\x00" in name or name.startswith("~"))


class ApiContext:
    def __init__(self, easel: Easel, gate: Gate | None = None, limits: ApiLimits | None = None):
        self.easel = easel
        self.gate = gate
        self.limits = limits or ApiLimits()
        self.options = OptionsStore()
        # Requests that name no checkpoint get the one Easel started with, not whatever another
        # user's job loaded last: the same request gives the same image whoever ran before it.
        start = easel.manager.default_checkpoint()
        self.start_checkpoint = start.name if start is not None else None

    # -- who is calling ----------------------------------------------------------------------------
    def caller(self, request: Request, client_id: str | None) -> Caller:
        if self.gate is not None and self.gate.enabled:
            user = self.gate.user_of(request)
            if user is None:  # only reachable if the AccessGuard was left out of the app
                raise ApiError(401, "sign in with HTTP Basic auth")
            return Caller(owner=user, user=user, admin=self.gate.accounts.is_admin(user))
        if client_id is not None:
            if not CLIENT_ID.match(client_id):
                raise ApiError(422, "1 to 64 letters, digits or ._:@-", "X-Easel-Client", location="header")
            return Caller(owner=f"api:{client_id}")
        host = request.client.host if request.client else ANONYMOUS
        return Caller(owner=f"api:{host}")

    # -- checkpoints -------------------------------------------------------------------------------
    def resolve_checkpoint(self, name: str | None, field_name: str) -> CheckpointInfo:
        """A checkpoint from the catalog only; a name is never used as a path."""
        if name is not None and looks_like_path(name.strip()):
            raise field_error(field_name, "must be a checkpoint title, name or hash from /sdapi/v1/sd-models, "
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
            raise field_error(field_name, str(e)) from None

    # -- VAEs --------------------------------------------------------------------------------------
    def resolve_vae(self, name: str | None, field_name: str) -> str:
        """"Automatic", "None" or the name of a file listed in models/VAE; never a path."""
        choice = (name or AUTOMATIC).strip()
        if choice.lower() in (AUTOMATIC.lower(), NONE.lower()):
            return AUTOMATIC if choice.lower() == AUTOMATIC.lower() else NONE
        if looks_like_path(choice):
            raise field_error(field_name, "must be a VAE model_name from /sdapi/v1/sd-vae, not a file path")
        files = self.easel.vaes.files()
        for f in files:  # names resolve only through the listing
            if choice in (f.name, f.path.name, f.path.stem):
                return f.name
        raise field_error(field_name, f"no VAE {choice!r} in models/VAE; choose one of: "
                                      f"{', '.join([AUTOMATIC, NONE] + [f.name for f in files])}")

    def options_view(self, owner: str) -> dict[str, Any]:
        options = self.options.get(owner)
        try:
            info = self.resolve_checkpoint(options.sd_model_checkpoint, "sd_model_checkpoint")
        except ApiError:
            info = None
        view = options.model_dump()
        view["sd_model_checkpoint"] = info.title if info else options.sd_model_checkpoint
        view["sd_checkpoint_hash"] = info.sha256 if info else None
        return view

    def update_options(self, owner: str, changes: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Validate and store the known keys; (updated, ignored)."""
        known = {k: v for k, v in changes.items() if k in ApiOptions.model_fields and v is not None}
        ignored = sorted(k for k in changes if k not in ApiOptions.model_fields)
        current = self.options.get(owner)
        try:
            updated = ApiOptions.model_validate(current.model_dump() | known)
        except ValidationError as e:
            raise InvalidFields(e.errors()) from None
        if "sd_model_checkpoint" in known:
            info = self.resolve_checkpoint(updated.sd_model_checkpoint, "sd_model_checkpoint")
            updated.sd_model_checkpoint = info.title
        if "sd_vae" in known:
            updated.sd_vae = self.resolve_vae(updated.sd_vae, "sd_vae")
        self.options.put(owner, updated)
        return sorted(known), ignored

    # -- jobs --------------------------------------------------------------------------------------
    def prepare(self, body: ApiGenerationRequest, caller: Caller) -> tuple[GenerationParams, CheckpointInfo]:
        """The engine request: the checkpoint and VAE pinned (so another user's swap never changes them)
        and the caller's options and this request's `override_settings` applied. An img2img body's
        images are decoded here (422 naming the field when they are not images)."""
        options = self.options.get(caller.owner)
        overrides = self._overrides(body)
        info = self.resolve_checkpoint(*_pick(body.checkpoint, "checkpoint", overrides, "sd_model_checkpoint",
                                               options.sd_model_checkpoint, "checkpoint"))
        changes: dict[str, Any] = {"checkpoint": info.name}
        if "clip_skip" not in body.model_fields_set:
            changes["clip_skip"] = overrides.get("CLIP_stop_at_last_layers", options.CLIP_stop_at_last_layers)
        changes["vae"] = self.resolve_vae(*_pick(body.vae, "vae", overrides, "sd_vae", options.sd_vae, "sd_vae"))
        request = body.core(**changes)
        self._check_limits(request, info)
        return request, info

    @staticmethod
    def _overrides(body: ApiGenerationRequest) -> dict[str, Any]:
        known = {k: v for k, v in body.override_settings.items() if k in ApiOptions.model_fields and v is not None}
        try:
            ApiOptions.model_validate(known)
        except ValidationError as e:
            raise InvalidFields(e.errors(), prefix=("override_settings",)) from None
        return known

    def _check_limits(self, request: GenerationParams, info: CheckpointInfo) -> None:
        limits = self.limits
        if limits.max_steps is not None and request.steps > limits.max_steps:
            raise field_error("steps", f"at most {limits.max_steps} on this server")
        if limits.max_images is not None and request.total_images > limits.max_images:
            raise field_error("n_iter", f"batch_size * n_iter is at most {limits.max_images} on this server")
        if limits.max_pixels is not None:
            width, height = request.width, request.height
            if isinstance(request, Img2ImgRequest):  # the size it will run at: from the init image when not given
                width, height = img2img_size(request, request.init_image)
            elif width is None or height is None:
                default = self.easel.default_size_for(info.name)
                width, height = width or default[0], height or default[1]
            if width * height > limits.max_pixels:
                size = " (the init image's size, as width/height were not given)" if (
                    isinstance(request, Img2ImgRequest) and not (request.width and request.height)) else ""
                raise field_error("width", f"width * height is at most {limits.max_pixels} pixels on this server"
                                           f"{size}; it would be {width}x{height}")

    def submit(self, body: ApiGenerationRequest, caller: Caller, submit: SubmitJob) -> Submission:
        """Queue `body` through `submit` (an `Easel.submit_*`) for the caller."""
        request, info = self.prepare(body, caller)
        job = submit(request, caller.owner, body.save_images)
        ignored = body.ignored_fields() + sorted(k for k in body.override_settings if k not in ApiOptions.model_fields)
        return Submission(job, body, info, ignored)

    def visible_job(self, job_id: str, caller: Caller) -> Job:
        """A job the caller may see (their own; any for an admin). Others' are reported as missing."""
        job = self.easel.queue.get(job_id)
        if job is None or not caller.may_see(job):
            raise ApiError(404, f"no job {job_id!r} of yours (finished jobs are kept for a while only)")
        return job


ClientHeader = Annotated[str | None, Header(alias="X-Easel-Client", description=(
    "without auth: names the client, so several clients on one machine get separate queues and options"))]


def caller_dependency(ctx: ApiContext) -> Callable[..., Caller]:
    """The FastAPI dependency that names the caller of a route."""
    def caller(request: Request, client: ClientHeader = None) -> Caller:
        return ctx.caller(request, client)
    return caller


def _pick(value, field: str, overrides: dict, key: str, option, option_field: str) -> tuple[Any, str]:
    """(value, the field an error should name): the request's own field, then its
    override_settings[key], then the caller's option."""
    if value:
        return value, field
    if overrides.get(key):
        return overrides[key], f"override_settings.{key}"
    return option, option_field
