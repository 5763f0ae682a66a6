"""A shared instance under abuse: what each abuse costs the server and another user, against the same
figures at rest, measured side by side in one run.

Starts Easel (`app.py --nowebui` with three API logins, default limits) on a tiny random SD1.x model,
then for each abuse below measures, while it runs: the server's peak RSS (sampled every 20 ms), and
another user's latency for a cheap request (GET /sdapi/v1/options, every 50 ms) and for one small
picture (txt2img 64×64, 4 steps). The abuser is a different login, and for the brute force a different
address (127.0.0.2), as on a LAN.

    rest            nothing else happening
    big body        a 42 MB JSON body to /sdapi/v1/txt2img (an unknown field holding a long list)
    huge image      10 img2img, two at a time, with a 8192×8192 PNG (decoded: within the 64 MP cap), then
                    4 with a 300-byte PNG that declares 30000×30000 (refused from its header)
    many jobs       200 queued jobs at once from one owner (--max-queued-jobs caps it)
    big batch       one job of 8 × 8 images at 20 steps (split into turns between batches)
    brute force     400 wrong passwords for one account, 32 at a time

    python bench/abuse.py [--only NAME ...]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

USERS = {"other": "other-pw", "abuser": "abuser-pw", "victim": "victim-pw"}
SMALL = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 1}


@dataclass
class Figures:
    name: str
    peak_rss: float = 0.0  # MiB
    rss_after: float = 0.0
    pings: list[float] = field(default_factory=list)  # seconds
    image: float | None = None  # seconds for the other user's one picture
    note: str = ""


class RssSampler:
    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def solid_png(size: int) -> str:
    """A big picture that compresses to little (what a careless or hostile client can send cheaply)."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG", compress_level=9)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def declared_png(width: int, height: int) -> str:
    from pictures import declared_png as make
    return base64.b64encode(make(width, height)).decode("ascii")


async def pinger(http: httpx.AsyncClient, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        r = await http.get("/sdapi/v1/options", auth=("other", USERS["other"]))
        r.raise_for_status()
        out.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)


async def one_image(http: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    r = await http.post("/sdapi/v1/txt2img", json=SMALL, auth=("other", USERS["other"]), timeout=600)
    r.raise_for_status()
    return time.perf_counter() - started


async def measured(name: str, url: str, pid: int, abuse, *, with_image: bool = True) -> Figures:
    """Run `abuse(url)` while another user pings and asks for one picture; the server's peak RSS."""
    figures = Figures(name)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        stop = asyncio.Event()
        with RssSampler(pid) as rss:
            ping = asyncio.create_task(pinger(http, stop, figures.pings))
            task = asyncio.create_task(abuse(url))
            await asyncio.sleep(0.3)  # the abuse is under way
            if with_image:
                figures.image = await one_image(http)
            figures.note = await task
            stop.set()
            await ping
        figures.peak_rss = rss.peak / 2**20
    await asyncio.sleep(1.0)
    figures.rss_after = psutil.Process(pid).memory_info().rss / 2**20
    return figures


# -- the abuses ----------------------------------------------------------------------------------------------


async def rest(url: str) -> str:
    await asyncio.sleep(3)
    return ""


async def big_body(url: str) -> str:
    body = ('{"prompt": "x", "steps": 2, "width": 64, "height": 64, "junk": ['
            + ",".join(["0"] * 21_000_000) + "]}").encode()
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        r = await http.post("/sdapi/v1/txt2img", content=body, auth=("abuser", USERS["abuser"]),
                            headers={"content-type": "application/json"})
    echoed = len(r.content)
    return f"{len(body) / 2**20:.0f} MiB body → HTTP {r.status_code}, answer {echoed / 1024:.0f} KiB"


def huge_image(big: str, declared: str):
    async def abuse(url: str) -> str:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            auth = ("abuser", USERS["abuser"])
            body = {**SMALL, "steps": 2}
            real = []
            for _ in range(5):  # ten requests, two at a time (the ten kept 2.6 GB after they finished)
                real += await asyncio.gather(*[http.post("/sdapi/v1/img2img", json={**body, "init_images": [big]},
                                                         auth=auth) for _ in range(2)])
            started = time.perf_counter()
            fake = await asyncio.gather(*[http.post("/sdapi/v1/img2img", json={**body, "init_images": [declared]},
                                                    auth=auth) for _ in range(4)])
            refused = time.perf_counter() - started
        return (f"8192² ×10: HTTP {sorted({r.status_code for r in real})}; declared 30000² ×4: HTTP "
                f"{sorted({r.status_code for r in fake})} in {refused * 1000:.0f} ms")
    return abuse


async def many_jobs(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        auth = ("abuser", USERS["abuser"])
        answers = await asyncio.gather(*[http.post("/easel/v1/jobs", json={**SMALL, "steps": 10, "seed": i}, auth=auth)
                                         for i in range(200)])
        codes = [r.status_code for r in answers]
        await asyncio.sleep(2)
        await http.post("/sdapi/v1/interrupt", auth=auth)
    return f"{codes.count(202)} queued, {codes.count(429)} refused with 429"


async def big_batch(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        r = await http.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 20, "batch_size": 8, "n_iter": 8},
                            auth=("abuser", USERS["abuser"]))
        took = time.perf_counter() - started
    return f"HTTP {r.status_code}, {len(r.json().get('images', []))} images in {took:.1f} s"


async def brute_force(url: str) -> str:
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=url, timeout=600, transport=transport) as http:
        gate = asyncio.Semaphore(32)

        async def guess(i: int) -> int:
            async with gate:
                r = await http.get("/sdapi/v1/options", auth=("victim", f"guess-{i}"))
                return r.status_code
        codes = await asyncio.gather(*[guess(i) for i in range(400)])
        right = await http.get("/sdapi/v1/options", auth=("victim", USERS["victim"]))
    return (f"{codes.count(401)} guesses checked, {codes.count(429)} refused with 429; the right password "
            f"then: HTTP {right.status_code}")


# -- the run ------------------------------------------------------------------------------------------------


def table(rows: list[Figures]) -> str:
    base = rows[0]
    lines = ["| abuse | server peak RSS MiB | RSS after MiB | other user's GET p50 / max ms | other user's "
             "one picture s | what happened |", "|---|---|---|---|---|---|"]
    for f in rows:
        p50, top = statistics.median(f.pings) * 1000, max(f.pings) * 1000
        image = f"{f.image:.2f}" if f.image is not None else "–"
        if f is not base and f.image is not None and base.image:
            image += f" ({f.image / base.image:.1f}×)"
        lines.append(f"| {f.name} | {f.peak_rss:.0f} | {f.rss_after:.0f} | {p50:.0f} / {top:.0f} | {image} | "
                     f"{f.note} |")
    return "\n".join(lines)


async def main(only: list[str]) -> None:
    from browser import easel_server
    from tiny_models import build_tiny_sd, write_safetensors

    print("building the pictures …", flush=True)
    big, declared = solid_png(8192), declared_png(30000, 30000)
    abuses = {"rest": rest, "big body": big_body, "huge image": huge_image(big, declared), "many jobs": many_jobs,
              "big batch": big_batch, "brute force": brute_force}
    with tempfile.TemporaryDirectory(prefix="easel-abuse-") as tmp:
        data = Path(tmp)
        write_safetensors(build_tiny_sd(0), data / "models" / "Stable-diffusion" / "tiny.safetensors",
                          metadata={"modelspec.resolution": "64x64"})
        logins = ",".join(f"{u}:{p}" for u, p in USERS.items())
        with easel_server(data, "--nowebui", "--api-auth", logins, ready_path="/sdapi/v1/samplers") as url:
            pid = psutil.Process().children()[0].pid
            async with httpx.AsyncClient(base_url=url, timeout=600) as http:
                await one_image(http)  # warm: the model is loaded
            rows = []
            for name, abuse in abuses.items():
                if only and name not in only and name != "rest":
                    continue
                print(f"{name} …", flush=True)
                rows.append(await measured(name, url, pid, abuse))
                print("\n".join(table(rows).splitlines()[-1:]), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="run only these abuses (and rest)")
    asyncio.run(main(parser.parse_args().only))
