"""The HTML report (resnet-multi report): self-contained, all four lowerings' code, and a real browser opens it.

The report here is built from a small compare report made up in the test
(one backend that ran, one that failed), so no framework is needed. The
browser check drives Debian's headless ``chromium`` over the DevTools
protocol on a pipe (``--remote-debugging-pipe``): it fails on a console
error, an uncaught exception or any request that leaves the page, and
asserts that every backend's table cells and code panes are there. Without
chromium it skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

from resnet_multi import faces
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.shapes import layer_table
from resnet_multi.cli.commands import main

pytest.importorskip("pygments")
from resnet_multi.cli.report import PARTS, backend_source, split_sections, write_report  # noqa: E402
from resnet_multi.cli.tabs import book_tabs_comparison  # noqa: E402

FAILURE = "no environment found: run 'nox -s mxnet --install-only' <and a tag>"


def compare_fixture(name: str = "d2l_resnet18") -> dict:
    """A compare report as run_compare returns it: torch ran (with 3 training steps), mxnet failed."""
    spec = resolve(name)
    analytic = layer_table(spec, spec.input_shape).to_dict()
    rows = analytic["layers"]
    timing = {mode: {"median_s": s, "images_per_s": 8 / s, "practice": "channels_last"}
              for mode, s in (("infer", 0.05), ("train", 0.2))}
    torch = {"backend": "torch", "layers": rows, "total_params": analytic["total_params"],
             "environment": {"framework_version": "2.9.0", "device": "cpu", "python": "3.11.7", "numpy": "2.1",
                             "platform": "Linux"},
             "parity": {"ok": True, "max_abs_diff": 2e-7, "tolerance": 1e-4, "ref_max_abs": 0.4, "worst_layer": "fc",
                        "worst_rel_diff": 5e-7,
                        "layers": [{"name": r["name"], "rel_diff": 1e-7 * (1 + i)} for i, r in enumerate(rows)]},
             "timing": timing, "train": {"losses": [2.9, 2.6, 1.7]}, "python": "/env/torch/bin/python", "wall_s": 3.0}
    return {"name": spec.name, "input_shape": list(spec.input_shape), "batch": 8, "seed": 0, "device": "cpu",
            "precision": "fp32", "analytic": analytic, "backends": {"torch": torch, "mxnet": {"error": FAILURE}},
            "agreement": {}, "failed": {"mxnet": FAILURE}, "ok": False}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.panes: set[tuple[str, str]] = set()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.links += [a[k] or "" for k in ("src", "href") if k in a]
        if "pane" in (a.get("class") or "").split():
            self.panes.add((a["data-backend"], a["data-part"]))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    report = compare_fixture()
    report["book_tabs"] = book_tabs_comparison(report["name"], (1, 16, 16))  # what `report` adds for d2l_resnet18
    summary = write_report(report, path)
    assert summary["path"] == str(path) and summary["parts"] == list(PARTS) and summary["ok"] is False
    assert summary["book_tabs"]["TensorFlow"]["fields"][0] == "same_padding"
    assert summary["book_tabs"]["JAX"]["eval_first_differing_layer"] == "stem"  # 16 is even: 'same' moves
    return path


def test_every_backend_file_has_every_part():
    for backend in faces.names():
        sections = split_sections(backend_source(backend))
        assert set(PARTS) <= set(sections), backend


def test_the_page_is_self_contained_and_holds_all_four_lowerings(page):
    text = page.read_text("utf-8")
    parsed = _Page()
    parsed.feed(text)
    # Nothing outside the page: only in-page anchors (and data: URIs) in any src or href.
    assert parsed.links and all(link.startswith(("#", "data:")) for link in parsed.links), parsed.links
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert {"style", "script", "svg"} <= parsed.tags
    assert parsed.panes == {(b, p) for b in faces.names() for p in PARTS}
    for backend in faces.names():  # each backend's own code, e.g. its stem section's first definition line
        first_def = next(line for line in split_sections(backend_source(backend))["stem"][1].splitlines()
                         if line.startswith(("def ", "class ")))
        name = first_def.split()[1].split("(")[0].rstrip(":")
        assert f"backends/{backend}/model.py" in text and name in text
    # The book's tabs, compared through the reference: each tab, its preset, where its outputs part.
    assert 'id="book-tabs"' in text and all(f"<td>{tab}</td>" in text for tab in ("PyTorch", "MXNet", "TensorFlow", "JAX"))
    assert "d2l_resnet18_jax" in text and "bn.momentum" in text
    # The failed backend keeps its column, with its reason (escaped).
    assert "mxnet" in text and "&lt;and a tag&gt;" in text and "<and a tag>" not in text


def test_report_command_checks_its_destination_and_pygments_first(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nowhere" / "r.html"
    assert main(["report", "resnet20", "--html", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pygments", None)  # as if it were not installed
    assert main(["report", "resnet20", "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resnet-multi[report]" in err
    assert not (tmp_path / "r.html").exists()


def test_report_command_with_failing_backends_still_writes_their_columns(tmp_path, capsys):
    out = tmp_path / "r.html"
    code = main(["report", "resnet20", "--backends", "torch,mxnet", "--input-shape", "3,16,16", "--quiet",
                 "--python", f"torch={tmp_path / 'no-python'}", "--python", f"mxnet={tmp_path / 'no-python'}",
                 "--html", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1 and summary["ok"] is False and set(summary["failed"]) == {"torch", "mxnet"}
    assert summary["path"] == str(out) and summary["backends"] == ["torch", "mxnet"]
    text = out.read_text("utf-8")
    assert text.count('data-backend="torch"') > 5 and text.count('data-backend="mxnet"') > 5


# -- the real browser ------------------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs it with apt)")
        pytest.skip("chromium is not installed")
    return found


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: NUL-terminated JSON on fds 3 (in) and 4 (out)."""

    def __init__(self, chromium: str, profile: Path):
        args = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--remote-debugging-pipe",
                "--window-size=1440,900", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null', chromium, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := self.proc.stdout.read1(65536):
            buffer += chunk
            *done, buffer = buffer.split(b"\0")
            for raw in done:
                self.messages.put(json.loads(raw))
        self.messages.put(None)

    def send(self, method: str, session: str | None = None, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        return self.wait(lambda m: m.get("id") == self.next_id)

    def wait(self, done, timeout: float = 30.0) -> dict:
        while True:
            message = self.messages.get(timeout=timeout)
            assert message is not None, "chromium closed the pipe"
            if "id" not in message:
                self.events.append(message)
            if done(message):
                assert "error" not in message, message
                return message.get("result", message.get("params"))

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


CHECKS = """JSON.stringify((() => {
  const q = (s) => document.querySelectorAll(s).length;
  const backends = %s, code = %s, parts = %s;
  const out = {ready: document.body.dataset.ready || null, tables: {}, panes: {}, widths: []};
  for (const b of backends)
    out.tables[b] = ['#layers', '#parity', '#training', '#backends'].map(t => q(t + ' [data-backend="' + b + '"]'));
  for (const b of code) for (const p of parts)
    out.panes[b + '/' + p] = q('.pane[data-backend="' + b + '"][data-part="' + p + '"] pre');
  document.querySelectorAll('#part-stem .pane').forEach(e => out.widths.push(e.getBoundingClientRect().width));
  document.querySelector('input[data-toggle="torch"]').click();
  out.hidden = getComputedStyle(document.querySelector('.pane[data-backend="torch"]')).display;
  return out;
})())"""


def test_the_report_opens_in_headless_chromium(page, tmp_path):
    browser = DevTools(_chromium(), tmp_path / "profile")
    try:
        target = next(t for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = browser.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait(lambda m: m.get("method") == "Page.loadEventFired")
        report = compare_fixture()
        expression = CHECKS % (json.dumps(list(report["backends"])), json.dumps(faces.names()), json.dumps(list(PARTS)))
        found = json.loads(browser.send("Runtime.evaluate", session, expression=expression,
                                        returnByValue=True)["result"]["value"])
    finally:
        browser.close()
    errors = [e["params"] for e in browser.events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert all(url == page.as_uri() for url in requests), requests  # nothing but the page itself
    assert found["ready"] == "1"  # its script ran to the end
    for backend, counts in found["tables"].items():
        assert all(counts), (backend, counts)  # a column in every table, and a card
    assert all(n == 1 for n in found["panes"].values()), found["panes"]
    assert len(found["widths"]) == 4 and min(found["widths"]) > 250  # four readable columns on a laptop screen
    assert found["hidden"] == "none"  # the framework toggles work

