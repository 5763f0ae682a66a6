"""What every API route shares: the services, admission, and who is calling.

One `ApiContext` is built per app and closed over by the routes; nothing here is module-level state.
The caller is the signed-in user when auth is on (the same owner name the web UI uses, so one
person's UI and API jobs share one fair turn), otherwise the API client: `client:<X-Easel-Client>` when
it sends that header, else `addr:<its address>` (two name spaces, so a header cannot pose as an address). Every job goes through admission (webui/admission.py); a refusal there is a
`FieldError`, which the routes answer with a 422 naming the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

from fastapi import Header, Request

from webui.admission import Admission, Caller
from webui.auth import ANONYMOUS, Gate
from webui.extensions.loader import Extensions
from webui.jobs.queue import Job
from webui.models.catalog import CheckpointInfo
from webui.services import Easel

from .errors import ApiError
from .schemas import ApiGenerationRequest

CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")


@dataclass
class Submission:
    """A queued API job with what the response needs to describe it."""

    job: Job
    body: ApiGenerationRequest
    checkpoint: CheckpointInfo | None
    ignored: list[str] = field(default_factory=list)


class ApiContext:
    def __init__(self, easel: Easel, admission: Admission, gate: Gate | None = None,
                 extensions: Extensions | None = None):
        self.easel = easel
        self.admission = admission
        self.gate = gate
        self.extensions = extensions or Extensions()

    # -- who is calling ----------------------------------------------------------------------------
    def caller(self, request: Request, client_id: str | None) -> Caller:
        if self.gate is not None and self.gate.enabled:
            user = self.gate.user_of(request)
            if user is None:  # only reachable if the AccessGuard was left out of the app
                raise ApiError(401, "sign in with HTTP Basic auth")
            admin = self.gate.accounts.is_admin(user)
            return Caller(owner=user, user=user, admin=admin, manager=admin)
        if client_id is not None:
            if not CLIENT_ID.match(client_id):
                raise ApiError(422, "1 to 64 letters, digits or ._:@-", "X-Easel-Client", location="header")
            return Caller(owner=f"client:{client_id}", manager=True)  # never the same as an address-based owner
        host = request.client.host if request.client else ANONYMOUS
        return Caller(owner=f"addr:{host}", manager=True)

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, kind: str, body: ApiGenerationRequest, caller: Caller) -> Submission:
        """Decode the body into its job request and admit it for the caller (FieldError → 422)."""
        features = self.easel.features
        admitted = self.admission.submit(kind, body.core(features), caller, save=body.save_images)
        return Submission(admitted.job, body, admitted.checkpoint, body.ignored_fields(features) + admitted.ignored)

    def shows_paths(self, caller: Caller) -> bool:
        """Whether a caller may see server paths: an admin, or anyone on a private instance (no logins,
        not --listen or --share)."""
        settings = self.easel.settings
        shared = (self.gate is not None and self.gate.enabled) or settings.listen or settings.share
        return caller.admin or not shared

    def path_for(self, path, caller: Caller) -> str:
        """A server path as a caller may see it: whole (see shows_paths), else relative to the data dir
        (or just the file name)."""
        settings = self.easel.settings
        if self.shows_paths(caller):
            return str(path)
        try:
            return str(path.resolve().relative_to(settings.data_dir.resolve()))
        except ValueError:
            return path.name

    def visible_job(self, job_id: str, caller: Caller) -> Job:
        """A job the caller may see (their own; any for an admin). Others' are reported as missing."""
        job = self.admission.visible_job(job_id, caller)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} of yours (finished jobs are kept for a while only)")
        return job


ClientHeader = Annotated[str | None, Header(alias="X-Easel-Client", description=(
    "without auth: names the client, so several clients on one machine get separate queues and options"))]


def manager_only(caller: Caller, action: str = "rescanning the model folders") -> None:
    """Refuse what changes what everyone shares (rescanning model folders …) unless the caller may."""
    if not caller.manager:
        raise ApiError(403, f"{action} is an admin's action on this server")


def caller_dependency(ctx: ApiContext) -> Callable[..., Caller]:
    """The FastAPI dependency that names the caller of a route."""
    def caller(request: Request, client: ClientHeader = None) -> Caller:
        return ctx.caller(request, client)
    return caller


def job_answer(job: Job, position: int, url: str) -> dict[str, Any]:
    """The 202 body every queued job gets: id, state, position and where to poll."""
    return {"id": job.id, "state": job.state.value, "position": position, "url": url}
