"""The studio, driven in headless Chromium (Debian's chromium + chromium-driver, through Selenium): the
real server as a user starts it, with the tiny preset."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import small_story

from filmweaver.project import Project

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("gradio")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMEDRIVER = shutil.which("chromedriver")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (CHROMEDRIVER and BROWSER),
                                                   reason="needs Debian's chromium and chromium-driver")]
FILMWEAVER = str(Path(sys.executable).with_name("filmweaver"))
SCREENSHOTS = Path(os.environ.get("FILMWEAVER_SCREENSHOTS", "test-screenshots"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, _free_port(), None

    def start(self):
        self.proc = subprocess.Popen([FILMWEAVER, "-q", "studio", str(self.root), "--preset", "tiny", "--device", "cpu",
                                      "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        import urllib.request

        end = time.time() + 120
        while time.time() < end:
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                assert self.proc.poll() is None, self.proc.stdout.read().decode()
                time.sleep(0.3)
        raise TimeoutError("the studio did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Page:
    """One browser session on the studio, by the page's element ids."""

    def __init__(self, url: str):
        o = webdriver.ChromeOptions()
        o.binary_location = BROWSER
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  "--window-size=1400,2000", "--disable-background-networking"):
            o.add_argument(a)
        self.d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        self.d.get(url)
        self.wait_for(lambda: self.d.find_elements(By.CSS_SELECTOR, "#generate"), "the page")

    def wait_for(self, ok, what: str, timeout: float = 90):
        end = time.time() + timeout
        while time.time() < end:
            got = ok()
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; message: {self.message!r}")

    def set(self, elem_id: str, text) -> None:
        el = self.d.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
        self.d.execute_script("arguments[0].value = arguments[1];"
                              "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
                              "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));", el, str(text))

    def click(self, elem_id: str) -> None:
        self.d.find_element(By.CSS_SELECTOR, f"#{elem_id}").click()

    @property
    def message(self) -> str:
        return self.d.find_element(By.CSS_SELECTOR, "#message").text

    def do(self, elem_id: str, expect: str, timeout: float = 90) -> str:
        """Click and wait for the message line to change to one that says ``expect``."""
        before = self.message
        self.click(elem_id)
        return self.wait_for(lambda: self.message != before and expect in self.message and self.message,
                             f"{expect!r}", timeout)

    def storyboard(self) -> list[str]:
        return [e.get_attribute("alt") or e.text for e in self.d.find_elements(By.CSS_SELECTOR, "#storyboard .caption-label, #storyboard img")]

    def shot(self, n: int) -> None:
        self.set("shot", n)
        time.sleep(1.0)  # the shot's view follows the number

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def quit(self):
        self.d.quit()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "projects").start()
    yield s
    s.kill()


def _open(page: Page, name: str, story: dict) -> None:
    page.set("project", name)
    page.do("open", name)
    page.set("story-json", json.dumps(story, indent=1))
    page.do("save-story", "story saved")


def _files(root: Path) -> set[str]:
    skip = (".studio", ".filmweaver.lock", ".studio-progress.json", "references", "mag_ratios.json")
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not str(p.relative_to(root)).startswith(skip)}


def test_studio_makes_and_edits_a_film(server, tmp_path):
    page = Page(server.url)
    try:
        _open(page, "fox", small_story())
        assert page.do("generate", "generated shots [1, 2, 3, 4]")
        page.wait_for(lambda: len(page.d.find_elements(By.CSS_SELECTOR, "#storyboard img")) == 4, "4 shots")
        page.screenshot("storyboard")
        # regenerate shot 2 with a new seed: shots 3 and 4 saw the old one
        page.shot(2)
        page.set("shot-seed", 7)
        page.do("regenerate", "regenerated shot 2")
        root = server.root / "fox"
        assert Project(root).manifest["overrides"]["1"]["seed"] == 7
        assert [r["status"] for r in Project(root).shots] == ["done", "done", "stale", "stale"]
        # the memory inspector: shot 3's keyframes, pin one, generate again
        page.shot(3)
        page.wait_for(lambda: page.d.find_elements(By.CSS_SELECTOR, "#memory img"), "shot 3's memory")
        page.do("pin", "pinned shot00")
        assert page.do("generate", "generated shots [3, 4]")
        shot3 = Project(root).shot_record(2)
        assert any(m["role"] == "pinned" for m in shot3["shot_cache"])
        assert "pin" in page.d.find_element(By.CSS_SELECTOR, "#memory-edits").text
        page.screenshot("memory")
        # extend shot 4, then move it to 2 (memory rebuilt: 2..4 go stale) and generate
        page.shot(4)
        page.set("chunks", 1)
        page.do("extend", "extended shot 4 by 1")
        page.set("move-to", 2)
        page.do("move", "moved shot 4 to 2")
        assert [r["status"] for r in Project(root).shots] == ["done", "stale", "stale", "stale"]
        page.do("generate", "generated shots [2, 3, 4]")
        page.wait_for(lambda: "STALE" not in page.d.find_element(By.CSS_SELECTOR, "#storyboard").text
                      and len(page.d.find_elements(By.CSS_SELECTOR, "#storyboard img")) == 4, "a fresh storyboard")
        page.screenshot("after-move")
        # bad input: the JSON path of the problem is on the page, nothing is changed
        page.set("story-json", json.dumps({"scenes": [{"scene_num": 1, "video_prompts": ["a"], "cut": ["yes"]}]}))
        assert "scenes[0].cut[0]" in page.do("save-story", "error")
    finally:
        page.quit()
    # the project is a CLI project: `info` reads it, and the CLI makes the same files from its story
    info = subprocess.run([FILMWEAVER, "info", str(root)], capture_output=True, text=True)
    assert info.returncode == 0 and info.stdout.count(" done ") == 4, info.stdout + info.stderr
    cli = tmp_path / "cli"
    made = subprocess.run([FILMWEAVER, "-q", "generate", str(root / "story.json"), "-o", str(cli), "--preset", "tiny",
                           "--device", "cpu"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert _files(root) - {"manifest.backup.json"} >= {f for f in _files(cli) if not f.startswith("keyframes/")} - {"manifest.backup.json"}


def test_killed_server_resumes_and_two_sessions_share_a_project(tmp_path):
    long_story = small_story(n_scenes=10, shots_per_scene=3)
    server = Server(tmp_path / "projects").start()
    root = server.root / "long"
    a = Page(server.url)
    try:
        _open(a, "long", long_story)
        a.click("generate")
        # kill the server while it is between shots 3 and 30
        a.wait_for(lambda: len([r for r in Project(root).shots if r["status"] == "done"]) >= 3, "3 shots", 120)
        server.kill()
    finally:
        a.quit()
    done_before = {r["index"]: r["finished_at"] for r in Project(root).shots if r["status"] == "done"}
    assert 3 <= len(done_before) < 30
    server = Server(tmp_path / "projects").start()
    a, b = Page(server.url), Page(server.url)
    try:
        for page in (a, b):
            page.set("project", "long")
            page.do("open", "opened long")
        a.click("generate")
        # the second session sees the first one's job running, read-only, and its own job waits its turn
        b.wait_for(lambda: "running:" in b.d.find_element(By.CSS_SELECTOR, "#status").text, "the other job's progress")
        b.shot(1)
        b.click("pin")
        # ...and is shown its place in the one queue (Gradio's "queue: 1/1" over its outputs)
        b.wait_for(lambda: "queue: 1/" in b.d.find_element(By.TAG_NAME, "body").text, "its place in the queue", 60)
        a.wait_for(lambda: "generated shots" in a.message, "the resumed generate", 180)
        b.wait_for(lambda: "pinned" in b.message or "error" in b.message, "the queued pin", 120)
    finally:
        a.quit()
        b.quit()
        server.kill()
    p = Project(root)
    after = {r["index"]: r["finished_at"] for r in p.shots}
    assert all(after[i] == t for i, t in done_before.items())  # what was finished was kept, not made again
    assert len(p.shots) == 30 and all(p.shot_problem(r["index"]) is None for r in p.shots)
    info = subprocess.run([FILMWEAVER, "info", str(root)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
