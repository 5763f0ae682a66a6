"""A1111's postprocessing routes: `extra-single-image`, `extra-batch-images` (as the `webuiapi` client
sends them), and Easel's `refresh-upscalers`. The fields are Extras' own (webui/features/extras.py);
pictures come as base64 and are checked from their header before they are decoded. As in A1111, the
API does not save its results unless asked (`"save": true`)."""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
import html
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.concurrency import run_in_threadpool

from webui.features.extras import ExtrasRequest
from webui.jobs.queue import Job, JobState

from .context import ApiContext, Caller, caller_dependency, manager_only
from .errors import ApiError, EaselRoute
from .images import decode_image, encode_png
from .results import failure_error, wait_for

_FIELDS = {name: (f.annotation, f) for name, f in ExtrasRequest.model_fields.items()
           if name not in ("images", "names", "folder", "save")}
_API = ConfigDict(extra="forbid")


class ImageData(BaseModel):
    data: str = Field(description="base64 picture (a data: URL works too)")
    name: str = ""


ExtrasSingleImageRequest = create_model(
    "ExtrasSingleImageRequest", __config__=_API, **_FIELDS,
    save=(bool, Field(False, description="write the result under outputs/extras-images/DATE/")),
    image=(str, Field(description="base64 picture")))
ExtrasBatchImagesRequest = create_model(
    "ExtrasBatchImagesRequest", __config__=_API, **_FIELDS,
    save=(bool, Field(False, description="write the results under outputs/extras-images/DATE/")),
    imageList=(list[ImageData], Field(min_length=1, description="the pictures, each with a name")))


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


def extras_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]
    easel = ctx.easel

    async def run(fields: dict, pictures: list, names: list[str], caller: Caller) -> Job:
        def admit() -> Job:
            request = ExtrasRequest(**fields, images=pictures(), names=names)
            return ctx.admission.submit("extras", request, caller, save=fields.get("save", False)).job
        job = await run_in_threadpool(admit)
        await wait_for(job, easel.queue)
        if job.state is JobState.FAILED:
            raise failure_error(job)
        if job.state is JobState.INTERRUPTED:
            raise ApiError(409, "the job was interrupted before every picture was done")
        return job

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(body: ExtrasSingleImageRequest, caller: CallerDep):  # type: ignore[valid-type]
        """Upscale one picture with one or two upscalers and wait for it."""
        fields = body.model_dump(exclude={"image"})
        job = await run(fields, lambda: [decode_image(body.image, "image")], [""], caller)
        result = job.result
        image = await run_in_threadpool(encode_png, result.images[0], result.infotexts[0]) if result.images else None
        return ExtrasSingleImageResponse(html_info=_html(result.info), image=image)

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(body: ExtrasBatchImagesRequest, caller: CallerDep):  # type: ignore[valid-type]
        """Upscale several pictures alike and wait for them."""
        fields = body.model_dump(exclude={"imageList"})
        pictures = lambda: [decode_image(item.data, f"imageList.{n}.data")  # noqa: E731
                            for n, item in enumerate(body.imageList)]
        job = await run(fields, pictures, [item.name for item in body.imageList], caller)
        result = job.result
        images = await run_in_threadpool(lambda: [encode_png(im, info) for im, info in
                                                  zip(result.images, result.infotexts)])
        return ExtrasBatchImagesResponse(html_info=_html(result.info), images=images)

    @router.post("/refresh-upscalers")
    def refresh_upscalers(caller: CallerDep) -> None:
        """Rescan the upscaler folders (Easel lists them afresh on every use, so this only checks them)."""
        manager_only(caller)
        easel.upscalers.files()

    return router


def _html(info: str) -> str:
    return f"<p>{html.escape(info)}</p>" if info else ""
