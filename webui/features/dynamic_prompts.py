"""Dynamic prompts, through the `dynamicprompts` library (the engine of A1111's Dynamic Prompts extension):
`{red|blue} circle` variants, `{2$$a|b|c}` several of them, and `__colour__` wildcards from
`DATA_DIR/wildcards/colour.txt` (one option per line; sub-folders give `__folder/name__`).

On by default, as the extension is once installed: a prompt without such syntax is left alone. Each
image gets its own prompt, drawn with that image's seed, so an image and its seed always go
together; *combinatorial* instead walks every combination in order (as many as the job makes
images, repeating from the start when there are fewer). Each image's infotext has the prompt it was
made with (pasting it reproduces the image) and, like the extension, the template as `Template` /
`Negative Template`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
from dynamicprompts.wildcards import WildcardManager
from pydantic import BaseModel, Field

from webui.generation.errors import FieldError
from webui.generation.extension_points import Feature, Run
from webui.generation.fields import Param

SYNTAX = ("{", "__")


def has_syntax(text: str) -> bool:
    return any(mark in text for mark in SYNTAX)


class DynamicPromptsSettings(BaseModel):
    enabled: Annotated[bool, Field(), Param("Dynamic Prompts enabled")] = True
    combinatorial: Annotated[bool, Field(description="every combination in order, instead of random ones"),
                             Param("Combinatorial generation")] = False


class DynamicPrompts(Feature):
    name = "dynamic prompts"
    title = "Dynamic Prompts"
    settings = DynamicPromptsSettings

    def __init__(self, wildcards: Path):
        self.wildcards = wildcards

    def active(self, run: Run) -> bool:
        settings = run.settings_of(self)
        enabled = settings.enabled if settings is not None else True
        return enabled and any(has_syntax(p) for p in (run.request.prompt, run.request.negative_prompt))

    def prepare(self, run: Run) -> None:
        settings = run.settings_of(self) or DynamicPromptsSettings()
        req, total = run.request, len(run.prompts)
        seeds = [req.seed + i for i in range(total)]
        manager = WildcardManager(self.wildcards)
        run.prompts = self.expand(manager, run.prompts, seeds, settings.combinatorial, "prompt")
        run.negative_prompts = self.expand(manager, run.negative_prompts, seeds, settings.combinatorial,
                                           "negative_prompt")
        if has_syntax(req.prompt):
            run.infotext["Template"] = req.prompt
        if has_syntax(req.negative_prompt):
            run.infotext["Negative Template"] = req.negative_prompt

    @staticmethod
    def expand(manager: WildcardManager, templates: list[str], seeds: list[int], combinatorial: bool,
               field: str) -> list[str]:
        if not any(has_syntax(t) for t in templates):
            return templates
        try:
            if combinatorial:
                options = CombinatorialPromptGenerator(wildcard_manager=manager).generate(
                    templates[0], max_prompts=len(templates))
                return [options[i % len(options)] if options else templates[i] for i in range(len(templates))]
            return [RandomPromptGenerator(wildcard_manager=manager, seed=seed).generate(template, 1)[0]
                    if has_syntax(template) else template for template, seed in zip(templates, seeds)]
        except Exception as e:  # the library's parse errors: the request's fault, named
            raise FieldError(field, f"dynamic prompt syntax: {type(e).__name__}: {e}") from None

    def infotext(self, run: Run) -> dict[str, Any]:
        return {}  # the prompt line and Template keys say it all
