"""The selfie web page (examples/selfie_web.py): API numbers equal the command-line tools', bad
input ends in a 4xx that says what was wrong, concurrent requests, and the page in headless Chromium."""
import io
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="the web tests need the web extra: pip install -e '.[web]'")
uvicorn = pytest.importorskip("uvicorn", reason="the web tests need the web extra: pip install -e '.[web]'")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny selfie model (16 px, 2 epochs) and a few of its generated selfies."""
    import selfie_train
    root = tmp_path_factory.mktemp("web")
    selfie_train.main(["--synthetic-dir", str(root / "data"), "--n-images", "320", "--size", "16",
                       "--epochs", "2", "--out", str(root / "run"), "--no-progress"])
    selfies = [str(root / "data" / f"selfie_{i:05d}.png") for i in range(4)]
    return str(root / "run" / "model.npz"), selfies


@pytest.fixture(scope="module")
def server(model):
    """The app served by uvicorn on a free loopback port, in a thread: its base URL."""
    from lib.web import create_app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(model[0], max_upload=2 * 2**20), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def post_image(url, data, name="selfie.png", field="image"):
    return httpx.post(url + "/api/rate", files={field: (name, data, "application/octet-stream")}, timeout=60)


def test_rate_gives_the_numbers_of_the_command_line_tools(server, model, capsys):
    import selfie_crop
    import selfie_rate
    from lib.selfie_model import load_model
    path, selfies = model
    r = post_image(server, open(selfies[0], "rb").read())
    assert r.status_code == 200, r.text
    body = r.json()
    [(_, p)] = selfie_rate.main([selfies[0], "--model", path])
    box, best = selfie_crop.main([selfies[0], "--model", path, "--out", os.devnull])
    assert body["p_good"] == pytest.approx(p, abs=1e-6)
    assert body["crop"] == list(box) and body["crop_p_good"] == pytest.approx(best, abs=1e-6)
    _, meta = load_model(path)
    assert body["percentile"] == pytest.approx(100 * np.mean(np.array(meta["held_out_p_good"]) < p))
    assert body["verdict"] in capsys.readouterr().out                    # the verdict selfie_rate printed
    for key in ("crop_png", "saliency_png"):
        assert body[key].startswith("data:image/png;base64,")
    health = httpx.get(server + "/api/health").json()
    assert health["input_size"] == 16 and health["model"] == "model.npz" and health["trained_on"] == "synthetic"


def _png_claiming(width, height):
    """A 1x1 PNG whose header claims width x height pixels (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def test_bad_input_is_a_4xx_that_says_what_was_wrong(server, model):
    good = open(model[1][0], "rb").read()
    cases = [
        (dict(data=b""), 400, "empty"),
        (dict(data=b"just some text"), 400, "not an image"),
        (dict(data=good[: len(good) // 2]), 400, "truncated"),
        (dict(data=good, field="photo"), 400, "no field named 'image'"),
        (dict(data=_png_claiming(8000, 6000)), 413, "too large: 8000 x 6000 pixels"),
        (dict(data=_png_claiming(30000, 30000)), 413, "too large"),
        (dict(data=os.urandom(3 * 2**20)), 413, "limit is 2 MB"),
    ]
    for kwargs, status, words in cases:
        r = post_image(server, **kwargs)
        assert r.status_code == status and words in r.json()["error"], (words, r.status_code, r.text)
    r = httpx.post(server + "/api/rate", content=b"raw bytes", headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    assert httpx.get(server + "/api/health").status_code == 200          # still up
    assert post_image(server, good).status_code == 200


def test_concurrent_requests_all_answered_correctly(server, model):
    images = [open(p, "rb").read() for p in model[1]]
    want = [post_image(server, im).json()["p_good"] for im in images]   # one at a time first

    def one(i):
        r = post_image(server, images[i % len(images)])
        return r.status_code, r.json().get("p_good"), i % len(images)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(48)))
    assert all(status == 200 for status, _, _ in results)
    for _, p, k in results:
        assert p == pytest.approx(want[k], abs=1e-6)


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
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "trained on synthetic" in d.find_element(By.ID, "model").text)
        selfie = model[1][1]
        driver.find_element(By.ID, "file").send_keys(selfie)
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
        api = post_image(server, open(selfie, "rb").read()).json()
        assert driver.find_element(By.ID, "p").text == f"{api['p_good']:.3f}"
        x, y, s = api["crop"]
        assert f"x {x}, y {y}, size {s} px" in driver.find_element(By.ID, "cropinfo").text
        assert driver.find_element(By.ID, "verdict").text == api["verdict"]
        wait.until(lambda d: d.execute_script("return document.getElementById('saliency').naturalWidth") > 0)
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert Image.open(tmp_path / "page.png").size[0] > 0
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"\xff\xd8 not really a jpeg")
        driver.find_element(By.ID, "file").send_keys(str(broken))
        wait.until(lambda d: "not an image" in d.find_element(By.ID, "error").text)
        assert "broken.jpg" in driver.find_element(By.ID, "error").text
    finally:
        driver.quit()
