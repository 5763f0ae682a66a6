"""Finished jobs in A1111's response shapes: base64 images, `parameters`, and the `info` JSON."""
from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import json
import re
from typing import Any

from webui import __version__
from webui.features.travel import TravelVideo
from webui.generation.engine import GenerationResult
from webui.generation.fields import described
from webui.images.infotext import parse_infotext
from webui.images.video import SavedVideo
from webui.jobs.queue import Job, JobQueue
from webui.models.errors import ModelError
from webui.services import SavedResult

from .context import Submission
from .errors import ApiError
from .images import encode_png
from .schemas import GenerationResponse, JobStatus, VideoInfo


async def wait_for(job: Job, queue: JobQueue) -> None:
    """Wait for a job without holding a thread; if the wait is cancelled (server shutting down),
    the job is stopped rather than left running for nobody."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    job.add_done_callback(lambda _job: loop.call_soon_threadsafe(finished.set))
    try:
        await finished.wait()
    except asyncio.CancelledError:
        queue.interrupt(job.id)
        raise


_FIELD_MESSAGE = re.compile(r"^([A-Za-z_][A-Za-z0-9_. ]*): (.+)$", re.DOTALL)


def failure_error(job: Job) -> ApiError:
    """Why a job failed, as the API says it: the request's fault (a ValueError naming its field, a
    checkpoint that cannot be loaded) is a 422; anything else is the server's, a 500."""
    message = job.error or "generation failed"
    kind = job.error_type
    if kind is not None and issubclass(kind, ModelError):
        return ApiError(422, message, kind.field)
    if kind is not None and issubclass(kind, ValueError) and (m := _FIELD_MESSAGE.match(message)):
        return ApiError(422, m.group(2), m.group(1))
    return ApiError(500, f"generation failed: {message}", error="GenerationFailed")


def job_timestamp(job: Job) -> str:
    """A1111's job timestamp: when the job started (or was queued), as YYYYmmddHHMMSS."""
    return _dt.datetime.fromtimestamp(job.started or job.created).strftime("%Y%m%d%H%M%S")


def generation_result(job: Job) -> GenerationResult | None:
    saved = job.result
    return saved.result if isinstance(saved, SavedResult) else None


# infotext keys A1111 reports at the top of `info` rather than in extra_generation_params
_MAIN_KEYS = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE", "Version",
              "Denoising strength", "Prompt", "Negative prompt", "Size-1", "Size-2"}


def a1111_info(job: Job, submission: Submission | None = None) -> dict[str, Any]:
    """A1111's `info` for a generation job: what was actually run (resolved seeds, size, model), the
    request's described fields under their API names, and A1111's fixed keys."""
    result = generation_result(job)
    if result is None:  # interrupted while queued, or failed before the first image
        return {"job_id": job.id, "interrupted": job.interrupted, "error": job.error, "infotexts": [],
                "all_seeds": [], "all_subseeds": [], "images": 0}
    req = result.request
    first = parse_infotext(result.infotexts[0]) if result.infotexts else {}
    checkpoint = submission.checkpoint if submission else None
    fields = {name for name, _, param in described(type(req)) if param.ui is not None or param.infotext}
    info: dict[str, Any] = req.model_dump(mode="json", include=fields)
    info.update({
        "all_prompts": result.prompts or [req.prompt] * len(result.images),
        "all_negative_prompts": result.negative_prompts or [req.negative_prompt] * len(result.images),
        "seed": result.seeds[0] if result.seeds else req.seed,
        "all_seeds": result.seeds,
        "subseed": result.subseeds[0] if result.subseeds else req.subseed,
        "all_subseeds": result.subseeds,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": first.get("Model") or (checkpoint.model_name if checkpoint else None),
        "sd_model_hash": first.get("Model hash") or (checkpoint.shorthash if checkpoint else None),
        "sd_vae_name": first.get("VAE"),
        "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": getattr(req, "denoising_strength", None),
        "extra_generation_params": {k: v for k, v in first.items() if k not in _MAIN_KEYS},
        "index_of_first_image": 0,
        "infotexts": result.infotexts,
        "styles": [],
        "job_timestamp": job_timestamp(job),
        "is_using_inpainting_conditioning": bool(result.extra.get("inpainting_conditioning")),
        "version": f"easel-{__version__}",
        "job_id": job.id,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
    })
    if result.prompts:
        info["prompt"] = result.prompts[0]
    if submission is not None:
        info["easel_ignored"] = submission.ignored
    return info


def saved_images(job: Job) -> list[tuple[Any, str, int]]:
    """(image, infotext, seed) of each image a finished generation job made."""
    result = generation_result(job)
    if result is None:
        return []
    return list(zip(result.images, result.infotexts, result.seeds, strict=True))


def encoded_images(job: Job) -> list[str]:
    if isinstance(job.result, TravelVideo) and job.result.video is None:  # keyframe stills, on disk
        return [base64.b64encode(path.read_bytes()).decode("ascii") for path in job.result.frame_paths]
    return [encode_png(image, text) for image, text, _ in saved_images(job)]


def video_info(job: Job) -> VideoInfo | None:
    video = job.result
    if not isinstance(video, SavedVideo):
        return None
    travel = isinstance(video, TravelVideo)
    return VideoInfo(url=f"/easel/v1/jobs/{job.id}/video" if video.video is not None else None,
                     frames=video.frames, fps=video.fps, size=video.size, interrupted=video.interrupted,
                     folder=video.folder if travel else None, resumed=video.resumed if travel else 0)


def generation_response(submission: Submission) -> GenerationResponse:
    job, body = submission.job, submission.body
    return GenerationResponse(
        images=encoded_images(job) if body.send_images else [],
        parameters=body.echo(),
        info=json.dumps(a1111_info(job, submission), ensure_ascii=False),
    )


def job_fields(job: Job, position: int) -> dict[str, Any]:
    """What every JSON view of a job says (Easel's jobs API, the canvas endpoint): state and progress."""
    return {
        "id": job.id, "state": job.state, "stage": job.stage, "progress": job.progress,
        "eta_seconds": job.eta_seconds, "position": position, "step": job.step, "total_steps": job.total_steps,
        "error": job.error, "interrupted": job.interrupted, "text": job.progress_text(position), "worker": job.worker,
    }


def job_status(job: Job, queue: JobQueue, with_images: bool = True) -> JobStatus:
    finished = job.done
    return JobStatus(
        **job_fields(job, queue.position(job)),
        kind=job.description,
        owner=job.owner,
        created=job.created,
        started=job.started,
        finished=job.finished,
        images=encoded_images(job) if finished and with_images else None,
        info=a1111_info(job) if finished and generation_result(job) is not None else None,
        video=video_info(job) if finished else None,
    )


def preview_base64(job: Job) -> str | None:
    image = job.preview_image()
    return encode_png(image, None) if image is not None else None
