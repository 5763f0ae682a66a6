"""A1111 sampler and schedule-type names, mapped onto diffusers schedulers.

A1111 names samplers after k-diffusion ("Euler a", "DPM++ 2M") and, since 1.9, picks the noise
schedule separately ("Karras", "Exponential"); older clients still send combined names such as
"DPM++ 2M Karras". Each name maps to one diffusers scheduler class and its options; the scheduler
is built with `from_config` from the checkpoint's own noise-schedule config.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: type
    options: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    stochastic: bool = False  # consumes noise every step (ancestral / SDE)
    automatic_schedule: str = "Uniform"  # what "Automatic" means for this sampler, as in A1111


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, ("k_dpmpp_2m",), automatic_schedule="Karras"),
    Sampler("DPM++ SDE", DPMSolverSDEScheduler, {}, ("k_dpmpp_sde",), stochastic=True, automatic_schedule="Karras"),
    Sampler("DPM++ 2M SDE", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            ("k_dpmpp_2m_sde",), stochastic=True, automatic_schedule="Karras"),
    Sampler("DPM++ 2S a", DPMSolverSinglestepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2},
            ("k_dpmpp_2s_a",), automatic_schedule="Karras"),
    Sampler("Euler a", EulerAncestralDiscreteScheduler, {}, ("k_euler_a", "Euler Ancestral"), stochastic=True),
    Sampler("Euler", EulerDiscreteScheduler, {}, ("k_euler",)),
    Sampler("LMS", LMSDiscreteScheduler, {}, ("k_lms",)),
    Sampler("Heun", HeunDiscreteScheduler, {}, ("k_heun",)),
    Sampler("DPM2", KDPM2DiscreteScheduler, {}, ("k_dpm_2",), automatic_schedule="Karras"),
    Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, {}, ("k_dpm_2_a",), stochastic=True, automatic_schedule="Karras"),
    Sampler("DDIM", DDIMScheduler, {}, ("ddim",)),
    Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}, ("plms",)),
    Sampler("UniPC", UniPCMultistepScheduler, {}, ("unipc",)),
    Sampler("LCM", LCMScheduler, {}, ("lcm",)),
)

# schedule type -> scheduler option that selects it ({} = the scheduler's own)
SCHEDULE_TYPES: dict[str, dict] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
}

_BY_NAME = {s.name.lower(): s for s in SAMPLERS} | {a.lower(): s for s in SAMPLERS for a in s.aliases}


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_type_names() -> list[str]:
    return list(SCHEDULE_TYPES)


def resolve_sampler(name: str, schedule_type: str | None = "Automatic") -> tuple[Sampler, str]:
    """(sampler, schedule type) for an A1111 name, accepting combined names like "DPM++ 2M Karras"."""
    key = (name or "").strip().lower()
    schedule = (schedule_type or "Automatic").strip()
    if key not in _BY_NAME:
        for stype in ("Karras", "Exponential"):
            if key.endswith(" " + stype.lower()) and key[: -len(stype) - 1] in _BY_NAME:
                key = key[: -len(stype) - 1]
                if schedule in ("", "Automatic"):
                    schedule = stype
                break
    sampler = _BY_NAME.get(key)
    if sampler is None:
        raise ValueError(f"sampler_name: unknown sampler {name!r}; choose one of: {', '.join(sampler_names())}")
    canonical = {s.lower(): s for s in SCHEDULE_TYPES}.get(schedule.lower())
    if canonical is None:
        raise ValueError(f"scheduler: unknown schedule type {schedule_type!r}; choose one of: {', '.join(SCHEDULE_TYPES)}")
    if SCHEDULE_TYPES[canonical] and not _accepts(sampler.scheduler_class, SCHEDULE_TYPES[canonical]):
        raise ValueError(f"scheduler: schedule type {canonical!r} is not available with sampler {sampler.name!r}")
    return sampler, canonical


def _accepts(cls: type, options: dict) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return all(k in params for k in options)


def build_scheduler(sampler: Sampler, schedule_type: str, base_config: dict) -> SchedulerMixin:
    """A fresh scheduler instance (schedulers hold per-run state, so never share one between jobs)."""
    accepted = inspect.signature(sampler.scheduler_class.__init__).parameters
    config = {k: v for k, v in base_config.items() if k in accepted}
    config.update(sampler.options)
    schedule = sampler.automatic_schedule if schedule_type == "Automatic" else schedule_type
    config.update(SCHEDULE_TYPES[schedule])
    if sampler.scheduler_class is DPMSolverSDEScheduler:
        config.setdefault("noise_sampler_seed", 0)
    return sampler.scheduler_class.from_config(config)
