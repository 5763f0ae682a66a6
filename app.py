"""Easel entry point: parse flags, build the services once, serve the web UI.

    python app.py [--port 7860] [--listen] [--share] [--ckpt-dir DIR] [--data-dir DIR] ...

(`./launch.sh` installs everything into .venv first and then runs this.)
"""
from __future__ import annotations

import logging
import sys

import webui  # noqa: F401  (switches the Hugging Face libraries offline before they are imported)
from webui.settings import settings_from_args

log = logging.getLogger("easel")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(argv)

    from webui.services import Easel
    from webui.ui.layout import build_ui, launch_kwargs

    easel = Easel.create(settings)
    log.info("device %s, dtype %s, %d checkpoint(s) under %s", settings.device, settings.dtype,
             len(easel.manager.list()), ", ".join(str(d) for d in settings.checkpoint_dirs))
    if not settings.skip_load_model_at_start and easel.manager.default_checkpoint() is not None:
        try:
            model = easel.load_model(None)
            log.info("loaded %s", model.info.title)
        except Exception as e:  # a bad default checkpoint must not stop the UI from starting
            log.error("could not load the default checkpoint: %s", e)
    if settings.listen:
        log.warning("*** --listen: Easel is reachable from other machines WITHOUT a password. ***")
    blocks = build_ui(easel)
    blocks.queue(default_concurrency_limit=None)
    try:
        blocks.launch(
            server_name=settings.host,
            server_port=settings.port,
            share=settings.share,
            allowed_paths=[str(settings.outputs_dir)],
            show_error=False,
            **launch_kwargs(),
        )
    finally:
        easel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
