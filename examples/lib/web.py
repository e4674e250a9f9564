"""The selfie rater as a web app (FastAPI): one page, ``POST /api/rate`` and ``GET /api/health``.

Uploads are read into memory with a size cap and never written anywhere; every bad input ends
in a 4xx JSON ``{"error": "..."}``. The net is loaded once and shared: forward passes run
concurrently (a net's forward in eval mode is safe to call from several threads), and each
worker thread computes saliency on its own copy of the net, since backward reads what that
thread's forward cached in the layers.
"""
import base64
import copy
import io
import os
import resource
import threading

from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from . import selfie_model as sm

MAX_UPLOAD = 10 * 1024 * 1024                                       # bytes
MAX_PIXELS = 40_000_000                                             # width x height
PAGE = os.path.join(os.path.dirname(__file__), "web_page.html")


class BadInput(Exception):
    """An upload we refuse: the message says what was wrong; ``status`` is the HTTP code."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class _InMemoryParser(MultiPartParser):
    spool_max_size = MAX_UPLOAD + 1                                   # files never spill to disk


def decode_image(data, max_pixels=MAX_PIXELS):
    """Bytes of an uploaded file -> PIL RGB image, or BadInput saying what was wrong."""
    if not data:
        raise BadInput("the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size                                          # read from the header only
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


def png_data_url(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


class Rater:
    """The loaded model and what the page shows for one image."""

    def __init__(self, model_path):
        self.path = model_path
        self.net, self.meta = sm.load_model(model_path)
        self._local = threading.local()

    def _own_net(self):
        """This thread's copy of the net, for saliency (its backward reads this thread's caches)."""
        if not hasattr(self._local, "net"):
            self._local.net = copy.deepcopy(self.net)
        return self._local.net

    def rate(self, image, pictures=True):
        """{"p_good", "verdict", "percentile", "crop": [x, y, size], ...} for a PIL image; with
        ``pictures``, also the crop and the saliency overlay as PNG data URLs."""
        (x, y, side), best, whole, _ = sm.find_crop(self.net, self.meta, image)
        out = dict(p_good=whole, verdict=sm.verdict(whole), percentile=sm.percentile(self.meta, whole),
                   crop=[x, y, side], crop_p_good=best, trained_on=self.meta.get("source"))
        if pictures:
            _, _, _, overlay = sm.explain(self._own_net(), self.meta, image)
            out["crop_png"] = png_data_url(image.crop((x, y, x + side, y + side)).resize((320, 320)))
            out["saliency_png"] = png_data_url(overlay)
        return out

    def health(self):
        return dict(status="ok", model=os.path.basename(self.path), path=self.path,
                    input_size=self.meta["size"], trained_on=self.meta.get("source"),
                    test_accuracy=self.meta.get("test_accuracy"),
                    peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


async def read_upload(request, limit=MAX_UPLOAD):
    """The bytes of the multipart field ``image``, read into memory (at most ``limit`` bytes)."""
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise BadInput("send the photo as multipart/form-data with the field name 'image'", 415)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise BadInput(f"the upload is {int(declared) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB", 413)
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + 64 * 1024:                                 # room for the multipart framing
            raise BadInput(f"the upload is over the {limit / 2**20:.0f} MB limit", 413)
        body.append(chunk)
    data = b"".join(body)

    async def replay():
        yield data
        yield b""

    try:
        form = await _InMemoryParser(Headers(scope=request.scope), replay(), max_files=1, max_fields=10).parse()
    except MultiPartException as e:
        raise BadInput(f"cannot read the upload: {e}") from None
    field = form.get("image")
    if field is None:
        raise BadInput(f"no field named 'image' in the upload (got: {', '.join(form.keys()) or 'none'})")
    if isinstance(field, str):
        raise BadInput("the field 'image' must be a file, not text")
    content = await field.read()
    if len(content) > limit:
        raise BadInput(f"the image is {len(content) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB", 413)
    return content


def create_app(model_path, max_upload=MAX_UPLOAD):
    """The FastAPI app serving the model at ``model_path``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    rater = Rater(model_path)
    app = FastAPI(title="convlib selfie rater")
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/health")
    def health():
        return rater.health()

    @app.post("/api/rate")
    async def rate(request: Request):
        try:
            image = decode_image(await read_upload(request, max_upload))
            return await run_in_threadpool(rater.rate, image)
        except BadInput as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)

    app.state.rater = rater
    return app
