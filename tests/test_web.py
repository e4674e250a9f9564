"""The selfie web page (examples/selfie_web.py): API numbers equal the command-line tools', bad
input ends in a 4xx JSON error an ordinary client reads, slow clients are dropped without holding
a model thread, a full queue answers 503, uploads stay off the disk, and the page in headless
Chromium."""
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="the web tests need the web extra: pip install -e '.[web]'")
uvicorn = pytest.importorskip("uvicorn", reason="the web tests need the web extra: pip install -e '.[web]'")

LIMIT = 2 * 2**20                                                      # the test servers' upload limit
TIMEOUT = 1.0                                                          # their header and body timeouts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny selfie model (16 px, 2 epochs) and a few of its generated selfies."""
    import selfie_train
    root = tmp_path_factory.mktemp("web")
    selfie_train.main(["--synthetic-dir", str(root / "data"), "--n-images", "320", "--size", "16",
                       "--epochs", "2", "--out", str(root / "run"), "--no-progress"])
    selfies = [str(root / "data" / f"selfie_{i:05d}.png") for i in range(4)]
    return str(root / "run" / "model.npz"), selfies


@contextlib.contextmanager
def serving(model_path, **settings):
    """The app served by uvicorn (with the slow-client guard) on a free loopback port, in a
    thread: yields (base URL, the app's Rater)."""
    from lib.web import create_app, server_config
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(model_path, max_upload=LIMIT, body_timeout=TIMEOUT, **settings)
    srv = uvicorn.Server(server_config(app, TIMEOUT, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app.state.rater
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(model):
    with serving(model[0]) as (url, _):
        yield url


def post_image(url, data, name="selfie.png", field="image", query=""):
    return httpx.post(url + "/api/rate" + query, files={field: (name, data, "application/octet-stream")}, timeout=60)


def urllib_post(url, data):
    """(status, JSON body) of a multipart upload sent with urllib, which sends the whole body
    before reading the answer and asks for the connection to be closed after it."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/api/rate", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rate_gives_the_numbers_of_the_command_line_tools(server, model, capsys):
    import selfie_crop
    import selfie_rate

    from lib.selfie_model import load_model
    path, selfies = model
    r = post_image(server, Path(selfies[0]).read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    [(_, p)] = selfie_rate.main([selfies[0], "--model", path])
    box, best = selfie_crop.main([selfies[0], "--model", path, "--out", os.devnull])
    assert body["p_good"] == pytest.approx(p, abs=1e-6)
    assert body["crop"] == list(box) and body["crop_p_good"] == pytest.approx(best, abs=1e-6)
    _, meta = load_model(path)
    assert body["percentile"] == pytest.approx(100 * np.mean(np.array(meta["held_out_p_good"]) < p))
    assert body["verdict"] in capsys.readouterr().out                    # the verdict selfie_rate printed
    assert "saliency_png" not in body and "crop_png" not in body         # pictures only on request
    health = httpx.get(server + "/api/health").json()
    assert health["input_size"] == 16 and health["model"] == "model.npz" and health["trained_on"] == "synthetic"
    assert health["max_upload_bytes"] == LIMIT


def test_explain_adds_the_pictures_to_the_same_answer(server, model):
    from lib.selfie_model import explain, load_model
    data = Path(model[1][2]).read_bytes()
    plain = post_image(server, data).json()
    r = post_image(server, data, query="?explain=1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in plain} == plain
    net, meta = load_model(model[0])
    image = Image.open(model[1][2]).convert("RGB")
    pictures = {}
    for key in ("crop_png", "saliency_png"):
        prefix = "data:image/png;base64,"
        assert body[key].startswith(prefix)
        pictures[key] = np.asarray(Image.open(io.BytesIO(base64.b64decode(body[key][len(prefix):]))))
    x, y, s = plain["crop"]
    want = np.asarray(image.crop((x, y, x + s, y + s)).resize((320, 320)))
    np.testing.assert_array_equal(pictures["crop_png"], want)
    np.testing.assert_array_equal(pictures["saliency_png"], np.asarray(explain(net, meta, image)[3]))


def _png_claiming(width, height):
    """A 1x1 PNG whose header claims width x height pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _png_bomb(width, height):
    """A valid greyscale PNG of width x height zeros: a few hundred kB that would decode to
    width x height bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_bad_input_is_a_4xx_json_error_that_says_what_was_wrong(server, model):
    good = Path(model[1][0]).read_bytes()
    bomb = _png_bomb(9000, 6000)
    assert len(bomb) < 200_000
    cases = [
        ({"data": b""}, 400, "empty"),
        ({"data": b"just some text"}, 400, "not an image"),
        ({"data": good[: len(good) // 2]}, 400, "truncated"),
        ({"data": good, "field": "photo"}, 400, "no field named 'image'"),
        ({"data": _png_claiming(8000, 6000)}, 413, "too large: 8000 x 6000 pixels"),
        ({"data": _png_claiming(30000, 30000)}, 413, "too large"),
        ({"data": bomb}, 413, "too large: 9000 x 6000 pixels"),
        ({"data": os.urandom(LIMIT + 2**20)}, 413, "limit is 2 MB"),
    ]
    for kwargs, status, words in cases:
        r = post_image(server, **kwargs)
        assert r.status_code == status and words in r.json()["error"], (words, r.status_code, r.text)
    r = httpx.post(server + "/api/rate", content=b"raw bytes", headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    assert httpx.get(server + "/api/health").status_code == 200          # still up
    assert post_image(server, good).status_code == 200


def test_ordinary_clients_read_the_413_of_a_big_upload(server, model):
    """urllib (and requests, where installed) send the whole body before reading the answer:
    the server reads the rest of an upload over the limit before its 413, so they get the JSON
    error, not a reset connection; the next good request is answered."""
    good = Path(model[1][0]).read_bytes()
    for size in (LIMIT + 2**20, 10 * LIMIT):
        status, body = urllib_post(server, os.urandom(size))
        assert status == 413 and "the limit is 2 MB" in body["error"], (size, status, body)
    status, body = urllib_post(server, good)
    assert status == 200 and 0 <= body["p_good"] <= 1
    try:
        import requests
    except ImportError:
        return
    r = requests.post(server + "/api/rate", files={"image": ("big.jpg", os.urandom(10 * LIMIT))}, timeout=60)
    assert r.status_code == 413 and "the limit is 2 MB" in r.json()["error"]
    assert requests.post(server + "/api/rate", files={"image": ("a.png", good)}, timeout=60).status_code == 200


def _connect(url):
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock):
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_slow_clients_are_dropped_without_holding_a_model_thread(model):
    """One client trickles its request head, one its body: each gets a 408 JSON error and a
    closed connection after the timeout; meanwhile no request is admitted to the model
    threads and a good request is answered at once."""
    good = Path(model[1][0]).read_bytes()
    with serving(model[0], threads=1, queue=0) as (url, rater):
        head, body = _connect(url), _connect(url)
        head.sendall(b"POST /api/rate HTTP/1.1\r\nHost: x\r\n")          # the head never ends
        body.sendall(b"POST /api/rate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\n")         # 100 kB announced, a few bytes sent
        t0 = time.monotonic()
        r = post_image(url, good)                                        # answered while both wait
        assert r.status_code == 200 and rater.admitted == 0
        for sock, words in ((head, b"request head took longer"), (body, b"upload took longer")):
            while time.monotonic() - t0 < 0.8 * TIMEOUT:                 # still trickling before the timeout
                sock.sendall(b"X-Slow: 1\r\n" if sock is head else b"x")
                time.sleep(0.1)
            answer = _read_all(sock)                 # until the server closes it (else a 10 s socket timeout)
            assert answer.startswith(b"HTTP/1.1 408") and words in answer, answer[:200]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
            sock.close()
        assert post_image(url, good).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(model):
    good = Path(model[1][0]).read_bytes()
    with serving(model[0], threads=1, queue=0) as (url, rater):
        release, started = threading.Event(), threading.Event()
        rating = rater.rating

        def slow_rating(image):
            started.set()
            release.wait(30)
            return rating(image)

        rater.rating = slow_rating
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post_image, url, good)
            assert started.wait(30)
            r = post_image(url, good, name="other.png")
            assert r.status_code == 503 and "busy" in r.json()["error"]
            assert int(r.headers["retry-after"]) >= 1
            release.set()
            assert first.result().status_code == 200
        rater.rating = rating
        assert post_image(url, good).status_code == 200


def test_uploads_never_touch_the_disk(server, model, monkeypatch):
    """An upload just under the limit is answered while every way of making a temporary file
    fails (a valid PNG padded after its end to 2 MB)."""
    good = Path(model[1][0]).read_bytes()
    padded = good + b"\0" * (LIMIT - len(good) - 10)

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was about to be written to disk")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", no_disk)
    r = post_image(server, padded)
    assert r.status_code == 200, r.text
    assert r.json()["p_good"] == post_image(server, good).json()["p_good"]


def test_concurrent_requests_all_answered_correctly(server, model):
    images = [Path(p).read_bytes() for p in model[1]]
    want = [post_image(server, im).json() for im in images]             # one at a time first

    def one(i):
        r = post_image(server, images[i % len(images)])
        return r.status_code, r.json(), i % len(images)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(48)))
    assert all(status == 200 for status, _, _ in results)
    for _, body, k in results:
        assert body["crop"] == want[k]["crop"]
        assert body["p_good"] == pytest.approx(want[k]["p_good"], abs=1e-6)


def _chromium():
    for browser in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(browser) and shutil.which("chromedriver"):
            return shutil.which(browser), shutil.which("chromedriver")
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium with chromedriver here: apt-get install "
                    "chromium chromium-driver (.ci/run installs them)")
def test_the_page_in_a_real_browser(server, model, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium ([test] extra)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
    text = lambda d, id_: d.find_element(By.ID, id_).text
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "trained on synthetic" in text(d, "model"))
        selfie = model[1][1]
        driver.find_element(By.ID, "file").send_keys(selfie)
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
        api = post_image(server, Path(selfie).read_bytes()).json()
        assert text(driver, "p") == f"{api['p_good']:.3f}"
        x, y, s = api["crop"]
        assert f"x {x}, y {y}, size {s} px" in text(driver, "cropinfo")
        assert text(driver, "verdict") == api["verdict"]
        for picture in ("saliency", "crop"):                             # asked for after the score
            js = f"return document.getElementById('{picture}').naturalWidth"
            wait.until(lambda d, js=js: d.execute_script(js) > 0)
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert Image.open(tmp_path / "page.png").size[0] > 0
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"\xff\xd8 not really a jpeg")
        driver.find_element(By.ID, "file").send_keys(str(broken))
        wait.until(lambda d: "not an image" in text(d, "error"))
        assert "broken.jpg" in text(driver, "error")
        huge = tmp_path / "huge.jpg"                                     # refused by the page, never sent
        huge.write_bytes(b"\xff\xd8" + b"\0" * (LIMIT + 1))
        driver.find_element(By.ID, "file").send_keys(str(huge))
        wait.until(lambda d: "huge.jpg" in text(d, "error"))
        assert "the limit is 2.0 MB (not uploaded)" in text(driver, "error")
    finally:
        driver.quit()
