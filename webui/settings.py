"""Command-line flags (A1111's names and meanings) and the typed settings built from them."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.models.speed import SpeedOptions

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DEMO = REPO_ROOT / "models" / "Stable-diffusion" / "easel-demo-shapes.safetensors"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py",
        description="Easel: a self-hosted Stable Diffusion web UI (AUTOMATIC1111-compatible flags).",
    )
    net = p.add_argument_group("network")
    net.add_argument("--port", type=int, default=None, help="port to serve on (default 7860)")
    net.add_argument("--listen", action="store_true",
                     help="bind 0.0.0.0 so other machines on the network can connect (set --gradio-auth too)")
    net.add_argument("--share", action="store_true", help="open a public Gradio share link (for Colab)")
    paths = p.add_argument_group("paths")
    paths.add_argument("--data-dir", type=Path, default=REPO_ROOT,
                       help="base folder for models/, outputs/, config and caches (default: Easel's folder)")
    paths.add_argument("--ckpt-dir", type=Path, default=None,
                       help="another folder to search for checkpoints, besides models/Stable-diffusion")
    paths.add_argument("--ckpt", type=str, default=None, help="checkpoint to select at start (title, name or hash)")
    paths.add_argument("--extras-folder", action="append", default=[], metavar="DIR",
                       help="a folder of pictures the Extras tab's batch may read, besides the data folder "
                            "(repeatable; admins only when logins are on)")
    paths.add_argument("--gallery-folder", action="append", default=[], metavar="DIR",
                       help="another folder of pictures for the gallery to index and search, besides outputs/ "
                            "(repeatable; images there belong to nobody: with logins on, only admins see them)")
    paths.add_argument("--follow-model-links", action="store_true",
                       help="follow symbolic links in the model folders wherever they lead (default: only to "
                            "places inside the model folders)")
    paths.add_argument("--styles-file", action="append", default=[], metavar="PATH",
                       help="styles CSV file(s) in A1111's format, globs allowed (repeatable; default: "
                            "DATA_DIR/styles.csv and DATA_DIR/styles*.csv)")
    dev = p.add_argument_group("device and speed")
    dev.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                     help="where models run (default auto: cuda, then mps, then cpu)")
    dev.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                     help="weights dtype (default auto: fp16 on cuda/mps, fp32 on cpu)")
    dev.add_argument("--no-half", action="store_true", help="keep models in fp32 (same as --precision fp32)")
    dev.add_argument("--xformers", action="store_true",
                     help="use xformers attention when installed and on CUDA, else PyTorch SDPA (the default)")
    dev.add_argument("--opt-sdp-attention", action="store_true",
                     help="PyTorch scaled-dot-product attention (the default; accepted for A1111 compatibility)")
    dev.add_argument("--opt-channelslast", action="store_true",
                     help="channels-last memory format for the UNet and VAE (off by default; see bench/RESULTS.md)")
    dev.add_argument("--compile", action="store_true",
                     help="torch.compile the UNet (first image at each size pays the compilation; off by default)")
    vram = dev.add_mutually_exclusive_group()
    vram.add_argument("--medvram", action="store_true",
                      help="keep models in RAM and move only the running part (text encoder, UNet, VAE) to the GPU")
    vram.add_argument("--medvram-sdxl", action="store_true",
                      help="--medvram for SDXL checkpoints only; the others stay on the GPU")
    vram.add_argument("--lowvram", action="store_true",
                      help="stream weights to the GPU layer by layer (least VRAM, slowest)")
    dev.add_argument("--models-on-device", type=int, default=1, metavar="N",
                     help="checkpoints kept on the GPU at once (default 1)")
    dev.add_argument("--models-in-ram", type=int, default=1, metavar="N",
                     help="checkpoints kept in RAM after leaving the GPU, for fast switching back (default 1)")
    dev.add_argument("--device-cache-gb", type=float, default=None, metavar="GB",
                     help="also cap the models on the GPU by size")
    dev.add_argument("--ram-cache-gb", type=float, default=None, metavar="GB",
                     help="also cap the models kept in RAM by size")
    dev.add_argument("--skip-load-model-at-start", action="store_true",
                     help="do not load the default checkpoint at start; it loads on first use")
    dev.add_argument("--upscaler-tile", type=int, default=0, metavar="PX",
                     help="tile side for model upscalers (ESRGAN & co.); 0 = chosen from free memory (default)")
    dev.add_argument("--disable-nan-check", action="store_true",
                     help="do not stop when the UNet or VAE produces NaNs (the picture comes out black)")
    add_limit_arguments(p)
    add_extension_arguments(p)
    add_access_arguments(p)
    add_worker_arguments(p)
    return p


def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """Where generation runs: this process, or Ray workers (one per GPU; pip install -r requirements-ray.txt)."""
    wrk = p.add_argument_group("workers (many GPUs through Ray; optional: pip install -r requirements-ray.txt)")
    wrk.add_argument("--workers", choices=["local", "ray"], default="local",
                     help="local: generate in this process (default); ray: on Ray workers, one per GPU (or CPU "
                          "slot), behind this one page, API and queue")
    wrk.add_argument("--ray-workers", type=int, default=0, metavar="N",
                     help="with --workers ray: start N workers (on a local Ray cluster Easel starts, or on the "
                          "cluster of --ray-address); default: one per GPU of the cluster")
    wrk.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="with --workers ray: join this Ray cluster (e.g. 10.0.0.5:6379, or 'auto') instead of "
                          "starting a local one; every GPU in it becomes a worker, also those of hosts that join later")
    wrk.add_argument("--worker-timeout", type=float, default=300.0, metavar="S",
                     help="a worker whose job shows no progress for this long is taken as hung: it is stopped and "
                          "the job is retried once on another worker (default 300)")


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """What one job may ask for, on every entry path (page, API, canvas, zoom); 0 = no limit."""
    lim = p.add_argument_group("limits per job (0 = no limit; defaults suit a shared instance)")
    lim.add_argument("--max-steps", type=int, default=Limits.max_steps, metavar="N",
                     help=f"sampling steps (default {Limits.max_steps})")
    lim.add_argument("--max-pixels", type=int, default=Limits.max_pixels, metavar="N",
                     help=f"width × height of an image (default {Limits.max_pixels}, i.e. 2048×2048)")
    lim.add_argument("--max-batch", type=int, default=Limits.max_batch, metavar="N",
                     help=f"images per job, batch size × batch count (default {Limits.max_batch})")
    lim.add_argument("--max-zoom-keyframes", type=int, default=Limits.max_zoom_keyframes, metavar="N",
                     help=f"keyframes of an infinite-zoom video (default {Limits.max_zoom_keyframes})")
    lim.add_argument("--max-job-work", type=float, default=Limits.max_job_work, metavar="MPS",
                     help="total work of one job in megapixel-steps: images × steps × width × height / 10⁶ "
                          f"(default {Limits.max_job_work:g}, e.g. 50 images of 512×512 at 150 steps)")
    lim.add_argument("--max-travel-frames", type=int, default=Limits.max_travel_frames, metavar="N",
                     help=f"frames of a prompt-travel video (default {Limits.max_travel_frames})")
    lim.add_argument("--max-queued-jobs", type=int, default=Limits.max_queued_jobs, metavar="N",
                     help=f"jobs one user may have waiting at once (default {Limits.max_queued_jobs})")
    lim.add_argument("--max-body-mb", type=float, default=Limits.max_body_bytes / 2**20, metavar="MB",
                     help=f"largest request body any route reads (default {Limits.max_body_bytes // 2**20})")


def add_extension_arguments(p: argparse.ArgumentParser) -> None:
    ext = p.add_argument_group("extensions")
    ext.add_argument("--disable-extensions", "--disable-all-extensions", dest="disable_extensions",
                     action="store_true", help="load no extension from extensions/ (Easel's built-ins still work)")
    ext.add_argument("--disable-extension", action="append", default=[], metavar="NAME",
                     help="do not load this extension (repeatable; also `disabled_extensions` in config.json)")


def add_access_arguments(p: argparse.ArgumentParser) -> None:
    """The HTTP API and who may use Easel (A1111's flag names)."""
    acc = p.add_argument_group("API and access")
    acc.add_argument("--api", action="store_true",
                     help="also serve A1111's HTTP API (/sdapi/v1/...) and Easel's (/easel/v1/...); docs at /docs")
    acc.add_argument("--nowebui", action="store_true",
                     help="serve only the HTTP API, no web UI (default port 7861)")
    acc.add_argument("--gradio-auth", metavar="USER:PASS[,USER:PASS]", default=None,
                     help="require a login for everything; a password may contain ':' (not ',')")
    acc.add_argument("--gradio-auth-path", metavar="FILE", type=Path, default=None,
                     help="read logins from a file: USER:PASS per line, or comma-separated")
    acc.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]", default=None,
                     help="logins for the HTTP API (HTTP Basic); without it the API takes the --gradio-auth logins")
    acc.add_argument("--admin-users", metavar="USER[,USER]", default=None,
                     help="users who may interrupt anyone's job (default: the first login given)")


SECRET_FLAGS = ("gradio_auth", "gradio_auth_path", "api_auth")


def parse_credentials(text: str, source: str) -> dict[str, str]:
    """`user:pass[,user:pass]` -> {user: pass}. Splits at the first ':' so passwords may hold ':'.

    Raises ValueError naming `source` (the flag or file) but never echoing a password.
    """
    users: dict[str, str] = {}
    for n, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        user, sep, password = item.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            raise ValueError(f"{source}: entry {n} is not USER:PASSWORD")
        if user in users:
            raise ValueError(f"{source}: user {user!r} is given twice")
        users[user] = password
    return users


def read_credentials_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--gradio-auth-path: cannot read {path}: {e.strerror or e}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        for user, password in parse_credentials(line, f"--gradio-auth-path {path}, line {number}").items():
            if user in users:
                raise ValueError(f"--gradio-auth-path {path}: user {user!r} is given twice")
            users[user] = password
    return users


def credentials_from_args(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """(UI logins, API logins) from the flags."""
    ui = parse_credentials(args.gradio_auth, "--gradio-auth") if args.gradio_auth else {}
    if args.gradio_auth_path is not None:
        for user, password in read_credentials_file(args.gradio_auth_path).items():
            if user in ui:
                raise ValueError(f"user {user!r} is in both --gradio-auth and --gradio-auth-path")
            ui[user] = password
    api = parse_credentials(args.api_auth, "--api-auth") if args.api_auth else {}
    return ui, api


def admins_from_args(args: argparse.Namespace, known: set[str]) -> tuple[str, ...]:
    admins = tuple(u.strip() for u in (args.admin_users or "").split(",") if u.strip())
    if admins and not known:
        raise ValueError("--admin-users needs logins (--gradio-auth, --gradio-auth-path or --api-auth)")
    if unknown := [u for u in admins if u not in known]:
        raise ValueError(f"--admin-users: {', '.join(map(repr, unknown))} has no login")
    return admins


def public_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as given, JSON-friendly, with every login blanked (for /sdapi/v1/cmd-flags)."""
    flags = {}
    for key, value in vars(args).items():
        if key in SECRET_FLAGS and value:
            value = "<hidden>"
        flags[key] = str(value) if isinstance(value, Path) else value
    return flags


@dataclass(frozen=True)
class Limits:
    """What one job may ask for, and how many one owner may queue (None = no limit). Checked by admission
    (and the queue, for max_queued_jobs) on every entry path."""

    max_steps: int | None = 150
    max_pixels: int | None = 2048 * 2048
    max_batch: int | None = 64
    max_zoom_keyframes: int | None = 50
    max_job_work: float | None = 2000.0  # megapixel-steps: images × steps × width × height / 1e6
    max_body_bytes: int = 256 * 1024 * 1024
    max_queued_jobs: int | None = 20  # per owner, waiting (the running one not counted)
    max_travel_frames: int | None = 600

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Limits":
        def cap(value):
            return None if value is None or value <= 0 else value
        return cls(cap(args.max_steps), cap(args.max_pixels), cap(args.max_batch), cap(args.max_zoom_keyframes),
                   cap(args.max_job_work), int(max(1.0, args.max_body_mb) * 2**20), cap(args.max_queued_jobs),
                   cap(args.max_travel_frames))

    @classmethod
    def none(cls) -> "Limits":
        """No limits beyond the request types' own (a single user's machine)."""
        return cls(None, None, None, None, None, max_queued_jobs=None, max_travel_frames=None)


@dataclass
class Settings:
    data_dir: Path
    port: int = 7860
    listen: bool = False
    share: bool = False
    ckpt_dir: Path | None = None
    ckpt: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    precision: str = "auto"  # the --precision asked for ("fp32" with --no-half): a worker picks its dtype from it
    xformers: bool = False
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    models_on_device: int = 1
    models_in_ram: int = 1
    device_cache_gb: float | None = None
    ram_cache_gb: float | None = None
    skip_load_model_at_start: bool = False
    nan_check: bool = True
    upscaler_tile: int = 0  # px; 0 = chosen from free memory
    extras_folders: tuple[str, ...] = ()  # folders besides the data folder the Extras batch may read
    gallery_folders: tuple[str, ...] = ()  # folders besides outputs/ the gallery indexes
    limits: Limits = field(default_factory=Limits)
    disable_extensions: bool = False
    disabled_extensions: tuple[str, ...] = ()
    styles_file: tuple[str, ...] = ()
    follow_model_links: bool = False
    api: bool = False
    nowebui: bool = False
    ui_credentials: dict[str, str] = field(default_factory=dict, repr=False)
    api_credentials: dict[str, str] = field(default_factory=dict, repr=False)
    admin_users: tuple[str, ...] = ()
    cmd_flags: dict[str, Any] = field(default_factory=dict, repr=False)  # logins blanked
    workers: str = "local"  # "local" | "ray"
    ray_workers: int = 0  # 0 = one per GPU of the cluster
    ray_address: str | None = None
    worker_timeout: float = 300.0

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoint_dirs(self) -> list[Path]:
        dirs = [self.models_dir / "Stable-diffusion"]
        if self.ckpt_dir is not None:
            dirs.append(self.ckpt_dir)
        return dirs

    @property
    def fallback_checkpoints(self) -> list[Path]:
        """Checkpoints listed whatever the data dir: the demo model Easel ships, so a page pointed at an
        empty --data-dir (a Colab Drive folder, a LAN share) still has a model."""
        demo = SHIPPED_DEMO
        inside = any(demo.parent.resolve() == d.resolve() for d in self.checkpoint_dirs if d.exists())
        return [demo] if demo.is_file() and not inside else []

    @property
    def extension_dirs(self) -> list[Path]:
        """extensions/ beside Easel's code, and in the data dir when that is elsewhere."""
        dirs = [REPO_ROOT / "extensions"]
        if self.data_dir.resolve() != REPO_ROOT.resolve():
            dirs.append(self.data_dir / "extensions")
        return dirs

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def styles_files(self) -> list[str]:
        """Where styles are read from: --styles-file, else styles.csv and styles*.csv in the data dir."""
        if self.styles_file:
            return list(self.styles_file)
        return [str(self.data_dir / "styles.csv"), str(self.data_dir / "styles*.csv")]

    @property
    def wildcards_dir(self) -> Path:
        """Dynamic-prompt wildcards (`__name__` = wildcards/name.txt), beside models/."""
        return self.data_dir / "wildcards"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch build")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SystemExit("--device mps: MPS is not available on this machine")
    return torch.device(name)


def pick_dtype(precision: str, no_half: bool, device: torch.device) -> torch.dtype:
    if no_half:
        return torch.float32
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return PRECISIONS[precision]


def settings_from_args(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ui_credentials, api_credentials = credentials_from_args(args)
        admin_users = admins_from_args(args, set(ui_credentials) | set(api_credentials))
    except ValueError as e:
        parser.error(str(e))
    device = pick_device(args.device)
    return Settings(
        data_dir=args.data_dir.resolve(),
        port=args.port or (7861 if args.nowebui else 7860),
        listen=args.listen,
        share=args.share,
        ckpt_dir=args.ckpt_dir.resolve() if args.ckpt_dir else None,
        ckpt=args.ckpt,
        device=device,
        dtype=pick_dtype(args.precision, args.no_half, device),
        precision="fp32" if args.no_half else args.precision,
        xformers=args.xformers,
        speed=SpeedOptions(
            offload="sequential" if args.lowvram else "model" if args.medvram or args.medvram_sdxl else "none",
            offload_only_sdxl=args.medvram_sdxl,
            attention="xformers" if args.xformers else "sdpa",
            channels_last=args.opt_channelslast,
            compile_unet=args.compile,
        ),
        models_on_device=max(1, args.models_on_device),
        models_in_ram=max(0, args.models_in_ram),
        device_cache_gb=args.device_cache_gb,
        ram_cache_gb=args.ram_cache_gb,
        skip_load_model_at_start=args.skip_load_model_at_start,
        nan_check=not args.disable_nan_check,
        upscaler_tile=max(0, args.upscaler_tile),
        extras_folders=tuple(args.extras_folder),
        gallery_folders=tuple(args.gallery_folder),
        limits=Limits.from_args(args),
        disable_extensions=args.disable_extensions,
        disabled_extensions=tuple(args.disable_extension),
        styles_file=tuple(args.styles_file),
        follow_model_links=args.follow_model_links,
        api=args.api or args.nowebui,
        nowebui=args.nowebui,
        ui_credentials=ui_credentials,
        api_credentials=api_credentials,
        admin_users=admin_users,
        cmd_flags=public_flags(args),
        workers=args.workers,
        ray_workers=max(0, args.ray_workers),
        ray_address=args.ray_address,
        worker_timeout=max(1.0, args.worker_timeout),
    )
