"""Property-based fuzzing of every API operation from its OpenAPI schema: no input may cause a 5xx,
and every answer must match the schema and content type it documents.

Valid and invalid inputs both: 10 examples per mode for operations with a body, 3 for the others
(about 180 cases in all). The
server limits keep every accepted generation tiny (2 steps, 64x64, 2 images) so valid cases stay fast.
"""
from __future__ import annotations

from dataclasses import replace

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from app import build_app
from webui.settings import Limits
from webui.generation.samplers import sampler_names, schedule_type_names

TINY = Limits(max_steps=2, max_pixels=64 * 64, max_batch=2)
EXAMPLES_PER_OPERATION_AND_MODE = 3
EXAMPLES_WITH_A_BODY = 10  # where the inputs are rich: txt2img, jobs, options, png-info
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


GENERATING = {("POST", "/sdapi/v1/txt2img"), ("POST", "/easel/v1/jobs")}


def affordable(case, sampler: str, schedule: str):
    """A valid generation request made cheap enough to run (and with a real sampler, so that most of
    them pass and the fuzzer reaches the engine, the store and the response instead of only the 422s)."""
    if isinstance(case.body, dict):
        case.body.update(steps=2, batch_size=1, n_iter=1)
        case.body.pop("checkpoint", None)
        if isinstance(case.body.get("clip_skip"), (int, float)):  # the tiny text encoder has 2 layers
            case.body["clip_skip"] = min(case.body["clip_skip"], 2)
        for key in ("width", "height"):
            if case.body.get(key) is not None:
                case.body[key] = 64
        if case.body.get("sampler_name") not in sampler_names():
            case.body["sampler_name"] = sampler
        if case.body.get("scheduler") not in schedule_type_names():
            case.body["scheduler"] = schedule
    return case


def strategy_for(operation, mode: GenerationMode):
    cases = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE and (operation.method.upper(), operation.path) in GENERATING:
        return st.builds(affordable, cases, st.sampled_from(sampler_names()), st.sampled_from(schedule_type_names()))
    return cases


def fuzz(operation, mode: GenerationMode) -> None:
    examples = EXAMPLES_WITH_A_BODY if operation.body else EXAMPLES_PER_OPERATION_AND_MODE

    @given(case=strategy_for(operation, mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        case.call_and_validate(checks=CHECKS)

    check()


def test_no_input_causes_a_server_error(easel):
    """(An operation with nothing to get wrong, like GET /sdapi/v1/samplers, has no invalid inputs.)"""
    easel.manager.preferred = "tiny-a.safetensors"
    easel.settings = replace(easel.settings, api=True, nowebui=True, limits=TINY)
    app = build_app(easel, easel.settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    negated = 0
    for operation in operations:
        fuzz(operation, GenerationMode.POSITIVE)
        try:
            fuzz(operation, GenerationMode.NEGATIVE)
            negated += 1
        except Unsatisfiable:
            pass
    assert negated >= 6  # those with a body, a query or a path parameter
