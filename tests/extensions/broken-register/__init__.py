"""A test extension that registers a feature, then fails: nothing of it may stay registered."""
from webui.extensions import ExtensionContext, Feature


class Half(Feature):
    name = "half registered"


def register(ctx: ExtensionContext) -> None:
    ctx.add_feature(Half())
    raise ValueError("register failed half-way on purpose")
