"""The gallery's routes: search, one image, its file and thumbnail, reverse search, star, delete, rescan.

Every route asks the gallery service who may see what (webui/gallery/service.py): with logins on a user gets
their own images only (an admin all), and files are served by id after that check, never by a path the
client names. Text search syntax: words, "quoted phrases", -exclusions and filters (`model:`, `sampler:`,
`seed:`, `size:`, `lora:`, `kind:`, `after:`/`before:`, `starred:`), see webui/gallery/query.py.
"""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from webui.errors import FieldError
from webui.gallery.service import row_json

from .context import ApiContext, Caller, caller_dependency, manager_only
from .errors import ApiError, EaselRoute
from .images import decode_image

MAX_PAGE_SIZE = 200


class SimilarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="base64 picture: near-duplicates, alike in content, alike in prompt")
    text: str | None = Field(None, max_length=2000, description="a description: images alike in content and prompt")
    id: int | None = Field(None, description="an indexed image's id: images like it")
    limit: int = Field(20, ge=1, le=100)


class StarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    starred: bool = True


def gallery_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/easel/v1/images", tags=["Gallery"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]
    gallery = ctx.easel.gallery

    def visible(action):
        """The gallery's answer; its refusal (an image the caller may not see, or none) is a 404."""
        try:
            return action()
        except FieldError as e:
            raise ApiError(404, e.message, "id", location="path") from None

    def found(row_id: int, caller: Caller):
        return visible(lambda: gallery.get(row_id, caller))

    @router.get("")
    def search(caller: CallerDep, q: str = Query("", max_length=2000), page: int = Query(1, ge=1, le=100_000),
               page_size: int = Query(50, ge=1, le=MAX_PAGE_SIZE),
               sort: Literal["newest", "oldest", "relevance"] = "newest") -> dict:
        """Images matching the query (all of the caller's when it is empty), a page at a time."""
        found_page = gallery.search(q, caller, page=page, page_size=page_size, sort=sort)
        return {"total": found_page.total, "page": found_page.page, "pages": found_page.pages,
                "page_size": found_page.page_size, "notes": list(found_page.notes),
                "images": [row_json(r) for r in found_page.rows]}

    @router.get("/{row_id}")
    def one(row_id: int, caller: CallerDep) -> dict:
        return row_json(found(row_id, caller))

    @router.get("/{row_id}/file")
    def file(row_id: int, caller: CallerDep) -> FileResponse:
        row = found(row_id, caller)
        return FileResponse(row.path, filename=row.path.name)

    @router.get("/{row_id}/thumb")
    def thumb(row_id: int, caller: CallerDep) -> FileResponse:
        return FileResponse(gallery.thumbnail(found(row_id, caller)), media_type="image/webp")

    @router.post("/similar")
    def similar(body: SimilarRequest, caller: CallerDep) -> dict:
        """Reverse search: from a picture (near-duplicates by perceptual hash, content by embedding, prompt by
        its infotext), a text (content and prompt) or an indexed image (all three)."""
        if sum(x is not None for x in (body.image, body.text, body.id)) != 1:
            raise FieldError("image", "send exactly one of image, text and id")
        if body.id is not None:
            found(body.id, caller)
        picture = decode_image(body.image, "image") if body.image is not None else None
        result = gallery.similar(caller, image=picture, text=body.text, row_id=body.id, limit=body.limit)
        return {"duplicates": [row_json(r) for r in result.duplicates],
                "content": [row_json(r) for r in result.content], "prompt": [row_json(r) for r in result.prompt],
                "content_search": gallery.content_search,
                **({"content_problem": gallery.embedder_problem} if not gallery.content_search else {})}

    @router.post("/rescan")
    def rescan(caller: CallerDep) -> dict:
        """Index what is new in outputs/ (and the --gallery-folder folders), forget what is gone."""
        manager_only(caller, "rescanning the gallery's folders")
        counts = gallery.rescan()
        return {k: getattr(counts, k) for k in ("added", "updated", "removed", "skipped", "unchanged")}

    @router.post("/{row_id}/star")
    def star(row_id: int, body: StarRequest, caller: CallerDep) -> dict:
        return row_json(visible(lambda: gallery.star(row_id, caller, body.starred)))

    @router.delete("/{row_id}")
    def delete(row_id: int, caller: CallerDep) -> dict:
        """Move the image to outputs/trash (its owner's or an admin's action)."""
        visible(lambda: gallery.delete(row_id, caller))
        return {"deleted": row_id}

    return router

