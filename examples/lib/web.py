"""The selfie rater as a web app (FastAPI on uvicorn): one page, ``POST /api/rate`` and
``GET /api/health``. docs/web.md has the API, the settings and the measurements.

How a request flows, and what bounds each step:

- uvicorn reads the request head on the event loop. ``SlowClientGuard`` (uvicorn's h11
  protocol plus a deadline) closes a connection whose head is not complete ``header_timeout``
  seconds after it opened or after its last answer: uvicorn alone has no such timeout (its
  keep-alive timer restarts at every byte received), so a client sending one byte a second
  would hold its connection for ever.
- The app reads the body on the event loop, into memory only, at most the upload limit plus a
  margin for the multipart framing, within ``body_timeout`` seconds (else 408 and the
  connection closed). The rest of an upload over the limit is read and dropped before the 413,
  so an ordinary client, which sends its whole body before reading the answer, reads the 413
  instead of a reset connection.
- The model's work (decode, score, crop search, pictures) runs on ``threads`` model threads,
  never on the event loop. At most ``threads + queue`` requests are admitted at once; past
  that the answer is 503 with a Retry-After header, not a growing backlog.
"""
import asyncio
import base64
import collections
import copy
import hashlib
import io
import math
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import selfie_model as sm

MAX_UPLOAD = 10 * 1024 * 1024                                       # bytes of the image file
FRAMING = 64 * 1024                                                 # room for the multipart framing
MAX_PIXELS = 40_000_000                                             # width x height
HEADER_TIMEOUT = 10.0                                               # s to send a request head
BODY_TIMEOUT = 60.0                                                 # s to send a body (10 MB at 1.4 Mbit/s)
DRAIN = 128 * 1024 * 1024                                           # bytes read and dropped past the limit
QUEUE = 16                                                          # requests waiting beyond the threads
PAGE = os.path.join(os.path.dirname(__file__), "web_page.html")


class BadInput(Exception):
    """A request we refuse: the message says what was wrong; ``status`` is the HTTP code,
    ``headers`` extra response headers."""

    def __init__(self, message, status=400, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}

    def with_headers(self, headers):
        self.headers.update(headers)
        return self


def decode_image(data, max_pixels=MAX_PIXELS):
    """Bytes of an uploaded file -> PIL RGB image, or BadInput saying what was wrong. The size
    is checked from the image's header, before any pixel is decoded."""
    if not data:
        raise BadInput("the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise BadInput(f"the image is too large: {w} x {h} pixels (limit {max_pixels:,} pixels)", 413)
            img.load()
            return img.convert("RGB")
    except BadInput:
        raise
    except Image.DecompressionBombError as e:
        raise BadInput(f"the image is too large to decode safely ({e})", 413) from None
    except UnidentifiedImageError:
        raise BadInput("not an image Pillow can read (JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput(f"the image is damaged or truncated ({e})") from None


def png_data_url(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Rater:
    """The loaded model, the model threads and what the API answers for one upload.

    ``answer`` runs on a model thread. Forward passes share ``net`` (eval mode keeps no state
    between calls that matters to another thread); saliency runs backward, which reads what
    the thread's own forward cached in the layers, so each thread has its own copy for it.
    """

    def __init__(self, model_path, threads=None, queue=QUEUE, max_pixels=MAX_PIXELS):
        self.path, self.max_pixels = model_path, max_pixels
        self.net, self.meta = sm.load_model(model_path)
        self.threads = threads or len(os.sched_getaffinity(0))
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="model")
        self.capacity = self.threads + queue
        self.admitted = 0                                            # event loop only
        self.seconds = 0.1                                           # running mean per answer
        self._local = threading.local()
        self._recent, self._lock = collections.OrderedDict(), threading.Lock()

    def rating(self, image):
        """The answer for a PIL image, as selfie_rate.py and selfie_crop.py compute it:
        {"p_good", "verdict", "percentile", "crop": [left, top, side], "crop_p_good", ...}."""
        box, best, whole, n = sm.find_crop(self.net, self.meta, image)
        return {"p_good": whole, "verdict": sm.verdict(whole), "percentile": sm.percentile(self.meta, whole),
                "crop": list(box), "crop_p_good": best, "crops_scored": n, "trained_on": self.meta.get("source")}

    def answer(self, data, explain=False):
        """The rating of an uploaded file's bytes; with ``explain``, plus the best crop and what
        the net looks at as PNG data URLs. The ratings of the last 32 uploads are kept (by
        SHA-256) for explain requests, so the page's second request costs only the pictures."""
        t0 = time.perf_counter()
        image = decode_image(data, self.max_pixels)
        digest = hashlib.sha256(data).digest()
        with self._lock:
            out = self._recent.get(digest) if explain else None
        if out is None:
            out = self.rating(image)
            with self._lock:
                self._recent[digest] = out
                while len(self._recent) > 32:
                    self._recent.popitem(last=False)
        if explain:
            x, y, side = out["crop"]
            overlay = sm.explain(self._own_net(), self.meta, image)[3]
            out = dict(out, crop_png=png_data_url(image.crop((x, y, x + side, y + side)).resize((320, 320))),
                       saliency_png=png_data_url(overlay))
        self.seconds += 0.1 * (time.perf_counter() - t0 - self.seconds)
        return out

    def _own_net(self):
        if not hasattr(self._local, "net"):
            self._local.net = copy.deepcopy(self.net)
        return self._local.net

    async def run(self, fn, *args):
        """``fn(*args)`` on a model thread, if there is room in the queue; else BadInput 503
        with Retry-After: the seconds the requests ahead should take."""
        if self.admitted >= self.capacity:
            wait = max(1, math.ceil(self.admitted * self.seconds / self.threads))
            raise BadInput(f"the server is busy ({self.admitted} photos ahead); try again in {wait} s", 503,
                           {"Retry-After": str(wait)})
        self.admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.admitted -= 1

    def health(self):
        return {"status": "ok", "model": os.path.basename(self.path), "path": self.path,
                "input_size": self.meta["size"], "trained_on": self.meta.get("source"),
                "test_accuracy": self.meta.get("test_accuracy"), "threads": self.threads,
                "queue": self.capacity - self.threads, "admitted": self.admitted,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


async def read_upload(request, limit=MAX_UPLOAD, timeout=BODY_TIMEOUT):
    """The bytes of the multipart field ``image``, read into memory: at most ``limit`` bytes
    of file plus FRAMING, within ``timeout`` seconds. BadInput 415 / 413 / 408 / 400 else.

    An upload over the limit is read to its end and dropped (up to DRAIN bytes more) before the
    413: clients like urllib send the whole body before reading an answer, and ask for the
    connection to be closed after it; closing with their bytes unread would reset the
    connection and lose the 413."""
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise BadInput("send the photo as multipart/form-data with the field name 'image'", 415)
    cap, mb = limit + FRAMING, limit / 2**20
    declared = request.headers.get("content-length", "")
    declared = int(declared) if declared.isdigit() else None
    too_big = lambda size: BadInput(f"the upload is {size / 2**20:.1f} MB; the limit is {mb:g} MB", 413)
    if declared is not None and declared > cap + DRAIN:
        raise too_big(declared).with_headers({"Connection": "close"})

    async def body():
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap + DRAIN:
                raise too_big(size).with_headers({"Connection": "close"})
            if size > cap:
                chunks = []                                          # read on, keep nothing
            else:
                chunks.append(chunk)
        if size > cap:
            raise too_big(size)
        return b"".join(chunks)

    try:
        data = await asyncio.wait_for(body(), timeout)
    except TimeoutError:
        raise BadInput(f"the upload took longer than {timeout:g} s", 408, {"Connection": "close"}) from None
    except ClientDisconnect:
        raise BadInput("the client went away during the upload", 400) from None

    async def replay():
        yield data

    parser = type("InMemory", (MultiPartParser,), {"spool_max_size": cap + 1})   # never spills to disk
    try:
        form = await parser(Headers(scope=request.scope), replay(), max_files=1, max_fields=10).parse()
    except MultiPartException as e:
        raise BadInput(f"cannot read the upload: {e}") from None
    field = form.get("image")
    if field is None:
        raise BadInput(f"no field named 'image' in the upload (got: {', '.join(form.keys()) or 'none'})")
    if isinstance(field, str):
        raise BadInput("the field 'image' must be a file, not text")
    content = await field.read()
    if len(content) > limit:
        raise BadInput(f"the image is {len(content) / 2**20:.1f} MB; the limit is {mb:g} MB", 413)
    return content


def create_app(model_path, max_upload=MAX_UPLOAD, threads=None, queue=QUEUE, body_timeout=BODY_TIMEOUT,
               max_pixels=MAX_PIXELS):
    """The FastAPI app serving the model at ``model_path`` (its Rater is ``app.state.rater``)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    rater = Rater(model_path, threads, queue, max_pixels)
    app = FastAPI(title="convlib selfie rater")
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/health")
    def health():
        return dict(rater.health(), max_upload_bytes=max_upload)

    @app.post("/api/rate")
    async def rate(request: Request):
        try:
            data = await read_upload(request, max_upload, body_timeout)
            return await rater.run(rater.answer, data, request.query_params.get("explain") == "1")
        except BadInput as e:
            return JSONResponse({"error": str(e)}, status_code=e.status, headers=e.headers)

    app.state.rater = rater
    return app


def app_from_env():
    """create_app with the settings selfie_web.py puts in SELFIE_WEB_SETTINGS: how each of
    ``--workers`` processes builds its app (uvicorn imports it by name). ``kernel_threads``
    there is convlib's thread count in this process (model threads x it = the cores)."""
    import json

    from threadpoolctl import threadpool_limits

    import convlib as cl
    settings = json.loads(os.environ["SELFIE_WEB_SETTINGS"])
    cl.set_num_threads(settings.pop("kernel_threads"))
    # convlib runs every matrix product on one BLAS thread (inside its kernels' shares); kept
    # there, its kernels need not switch BLAS to one thread and back on every call
    threadpool_limits(1, user_api="blas")
    return create_app(**settings)


class SlowClientGuard(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head: closed, after a 408 JSON
    error, when the head is not complete ``config.header_timeout`` seconds after the connection
    opened or after the previous answer (an upload's discarded remainder counts against it)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.header_timeout = getattr(config, "header_timeout", HEADER_TIMEOUT)
        self._deadline = None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc):
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self):
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _expire(self):
        self._deadline = None
        waiting = self.cycle is None or self.cycle.response_complete   # no request being answered
        if waiting and not self.transport.is_closing():
            body = b'{"error": "the request head took longer than %g s"}' % self.header_timeout
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()


def server_config(app, header_timeout=HEADER_TIMEOUT, **kwargs):
    """A uvicorn.Config serving ``app`` with SlowClientGuard as its HTTP protocol."""
    import uvicorn
    config = uvicorn.Config(app, http=SlowClientGuard, **kwargs)
    config.header_timeout = header_timeout                           # read by SlowClientGuard
    return config
