"""The operator's path in a real browser (Debian's Chromium through Playwright) against the
embedded default with the lab (`cluster-mgmt-lab server`): log in with the shared token, find
the deployments, run provision-cluster/default from the UI's form, follow the run to Completed,
read the cluster's artifact; a bad name is refused by the form; the monitor's deployment shows
its schedule, a sweep started from the UI completes, and its fleet table lists the clusters
with the verdicts the monitor recorded.

Every page visited is kept (screenshots in the test's tmp_path) and checked: no shared token,
no piece of the lab's private key, no browser console error other than the known upstream ones
listed in ALLOWED_CONSOLE_ERRORS, and no network request beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from tests.conftest import REPO

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, Route

LAB_FIRST_ADDRESS = 110
CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by .ci/setup; Playwright downloads nothing
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAB_CLI = str(Path(sys.executable).parent / "cluster-mgmt-lab")
LOOPBACK = re.compile(r"^(http|ws)://127\.0\.0\.1[:/]")
RUN_WAIT_MS = 120_000  # a provision on the lab takes about 10 s
# Hosts the UI reaches out to on its own; the requests are blocked (only 127.0.0.1 is reached).
ALLOWED_EXTERNAL = {
    # Prefect's v2 UI initialises Amplitude whatever the analytics setting, and Amplitude then
    # fetches its remote configuration. Events themselves (api2.amplitude.com) must not be sent:
    # the embedded server runs with PREFECT_SERVER_ANALYTICS_ENABLED=false.
    "sr-client-cfg.amplitude.com",
}


@dataclass(frozen=True)
class Allowed:
    """A console error the test accepts: its text, where it came from, in which step, why."""

    text: str
    url: str
    step: str | None
    reason: str

    def matches(self, text: str, url: str, step: str) -> bool:
        return (
            re.search(self.text, text) is not None
            and re.search(self.url, url) is not None
            and self.step in (None, step)
        )


ALLOWED_CONSOLE_ERRORS = [
    Allowed(
        r"^Failed to load resource: net::ERR_FAILED$",
        r"^https://sr-client-cfg\.amplitude\.com/",
        None,
        "the UI's Amplitude configuration fetch (see ALLOWED_EXTERNAL), blocked by this test",
    ),
    Allowed(
        r"^Failed to load resource: the server responded with a status of 401",
        r"/api/",
        "login",
        "before login the UI queries the API without credentials; the 401 sends it to /login",
    ),
    Allowed(
        r"^Error\n\s+at Object\.onResponse",
        r"",
        "login",
        "the UI logs each of those 401 answers with its stack before showing the login page",
    ),
    Allowed(
        r"^Failed to load resource: the server responded with a status of 404",
        r"^http://127\.0\.0\.1:\d+/[a-z-]+\.svg$",
        None,
        "the v2 UI's flow-run graph loads its state icons (/pending.svg, /completed.svg) from "
        "the server root instead of the UI's base /v2/ (Prefect 3.9 upstream)",
    ),
    Allowed(
        r"^Failed to load resource: the server responded with a status of 409",
        r"/api/deployments/[0-9a-f-]+/create_flow_run$",
        "bad-name",
        "the server refuses the run with the bad name: the outcome this step expects",
    ),
    Allowed(
        r"^Error creating flow run: Validation failed for field 'spec\.name'\. "
        r"Failure reason: 'Bad_Name' does not match",
        r"",
        "bad-name",
        "the UI logs that refusal too, besides showing it",
    ),
]


# Where the artifact's table lies on the page: its right edge, the viewport's and the page's
# widths, and every other visible element it overlaps (a side panel it runs into).
FITS = """table => {
  const t = table.getBoundingClientRect();
  const overlaps = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.contains(table) || table.contains(el)) continue;
    const r = el.getBoundingClientRect(), style = getComputedStyle(el);
    if (!r.width || !r.height || style.visibility === 'hidden') continue;
    if (r.left < t.right && r.right > t.left && r.top < t.bottom && r.bottom > t.top)
      overlaps.push(`${el.tagName}.${el.className} ${Math.round(r.left)}-${Math.round(r.right)}`);
  }
  return {right: t.right, viewport: window.innerWidth, overlaps,
          page_width: document.documentElement.scrollWidth};
}"""


# --- the embedded default with the lab ---------------------------------------------------------


@dataclass
class LabService:
    """`cluster-mgmt-lab server` as an operator starts it, and what it wrote for them."""

    ui_url: str
    auth_string: str
    spec: dict
    private_key: str
    state_root: Path

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        user, token = self.auth_string.split(":", 1)
        response = httpx.request(
            method, f"{self.api_url}{path}", auth=(user, token), timeout=10, **kwargs
        )
        response.raise_for_status()
        return response

    def flow_run_count(self) -> int:
        return self.api("POST", "/flow_runs/count", json={}).json()


@pytest.fixture(scope="module")
def lab_service() -> Iterator[LabService]:
    """`cluster-mgmt-lab server` (UI on) with 3 lab nodes on this module's addresses."""
    from lab.embedded import migrated_database, private_dir

    workdir = Path(tempfile.mkdtemp(prefix="cluster-mgmt-browser-"))
    # The lab server migrates a fresh database once per cache (its home's cache/); hand it the
    # suite's migrated one instead, as the session server uses (half of a fresh start-up).
    template = migrated_database(REPO / ".lab")
    shutil.copy2(template, private_dir(workdir / "lab" / "prefect" / "cache") / template.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    command = [LAB_CLI, "server", "--workdir", str(workdir / "lab"), "--nodes", "3"]
    process = subprocess.Popen(
        [*command, "--first-address", str(LAB_FIRST_ADDRESS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = []
        for line in process.stdout:
            output.append(line)
            if "Lab nodes up" in line:
                break
        else:
            pytest.fail(f"the lab server did not come up: {''.join(output)}")
        lab = workdir / "lab"
        yield LabService(
            ui_url=re.search(r"Prefect UI: (\S+)", "".join(output)).group(1),
            auth_string=(lab / "api-auth-string").read_text().strip(),
            spec=yaml.safe_load((lab / "lab-spec.yaml").read_text()),
            private_key=(lab / "nodes" / "client_ed25519").read_text(),
            state_root=lab / "state",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the browser and what it saw ---------------------------------------------------------------


@dataclass
class Watch:
    """Everything the browser saw: pages (HTML and text), console errors, outside requests."""

    secrets: dict[str, str]  # what -> the secret text
    shots: Path  # where snapshots keep their screenshots
    step: str = "login"
    pages: list[tuple[str, str]] = field(default_factory=list)  # (what, HTML + text)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(f"{self.step}: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if not any(a.matches(message.text, url, self.step) for a in ALLOWED_CONSOLE_ERRORS):
            self.console_errors.append(f"{self.step}: {message.text} ({url})")

    def route(self, route: Route) -> None:
        """Requests beyond 127.0.0.1 are recorded and never leave the machine."""
        if LOOPBACK.match(route.request.url):
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def snapshot(self, page: Page, what: str) -> str:
        """Keep the page (screenshot, HTML and text) for the checks; its text."""
        page.screenshot(path=self.shots / f"{len(self.pages):02d}-{what}.png", full_page=True)
        text = page.inner_text("body")
        self.pages.append((f"{what} {page.url}", page.content() + "\n" + text))
        return text

    def leaks(self, text: str) -> list[str]:
        squeezed = re.sub(r"\s+", "", text)
        return [what for what, s in self.secrets.items() if s in text or s in squeezed]

    def assert_clean(self) -> None:
        leaked = {what: found for what, body in self.pages if (found := self.leaks(body))}
        assert not leaked, f"secrets shown on pages: {leaked}"
        assert not self.page_errors, self.page_errors
        assert not self.console_errors, self.console_errors
        hosts = {re.sub(r"^\w+://([^/:]+).*", r"\1", url) for url in self.external}
        assert hosts <= ALLOWED_EXTERNAL, f"the UI reached out beyond 127.0.0.1: {self.external}"


def key_chunks(private_key: str, size: int = 40) -> dict[str, str]:
    """The private key's body in `size`-character pieces (any one of them is a leak)."""
    body = "".join(line for line in private_key.splitlines() if "PRIVATE KEY" not in line)
    starts = range(0, len(body) - size + 1, size)
    return {f"private key characters {i}-{i + size}": body[i : i + size] for i in starts}


@dataclass
class Ui:
    """The logged-in browser page, what it saw, and the service behind it."""

    page: Page
    watch: Watch
    lab: LabService


@pytest.fixture(scope="module")
def ui(lab_service, tmp_path_factory) -> Iterator[Ui]:
    """A fresh Chromium profile, logged in to the Prefect UI with the shared token."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run .ci/setup"
    token = lab_service.auth_string.split(":", 1)[1]
    secrets = {"shared token": token, **key_chunks(lab_service.private_key)}
    watch = Watch(secrets, tmp_path_factory.mktemp("login"))
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            context.route("**/*", watch.route)
            page = context.new_page()
            page.set_default_timeout(30_000)
            watch.attach(page)
            page.goto(lab_service.ui_url)
            field_ = page.get_by_placeholder("admin:pass")
            field_.wait_for()
            watch.snapshot(page, "login")
            field_.fill(lab_service.auth_string)  # the whole `user:token` string
            page.get_by_role("button", name="Login").click()
            page.wait_for_url(lambda url: "/login" not in url)
            page.get_by_role("link", name="Deployments", exact=True).first.wait_for()
            watch.step = "logged-in"
            watch.snapshot(page, "dashboard")
            yield Ui(page, watch, lab_service)
        finally:
            context.close()


def ui_base(page: Page) -> str:
    """The UI's base URL (`http://127.0.0.1:<port>/v2`), from where the UI landed."""
    return re.match(r"^(http://[^/]+/[^/]+)/", page.url).group(1)


def open_artifact_key(page: Page, key: str) -> None:
    """On the artifacts page: search for `key` and click it in the list. A click on the list
    while it is re-rendered is lost (on a busy machine): then the key is clicked again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page.get_by_placeholder("Search artifacts").fill(key)
    page.wait_for_url(re.compile(rf"[?&]name={re.escape(key)}(&|$)"))
    for attempt in range(3):
        page.get_by_text(key, exact=True).click()
        try:
            page.wait_for_url(re.compile(rf"/artifacts/key/{re.escape(key)}$"), timeout=10_000)
            return
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise


def open_custom_run(ui: Ui) -> None:
    """Deployments → provision-cluster/default → Run → Custom run."""
    page = ui.page
    page.get_by_role("link", name="Deployments", exact=True).first.click()
    rows = page.get_by_role("row")
    for flow in ("provision-cluster", "teardown-cluster"):
        rows.filter(has_text=flow).get_by_role("link", name="default").wait_for()
    ui.watch.snapshot(page, "deployments")
    rows.filter(has_text="provision-cluster").get_by_role("link", name="default").click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    page.get_by_label("Name", exact=True).wait_for()


def fill_spec(ui: Ui, environment: str, name: str, nodes: list[dict]) -> None:
    """The ClusterSpec form: environment, name, and nodes with address, port and roles."""
    page = ui.page
    page.get_by_label("Environment (Optional)").fill(environment)
    page.get_by_label("Name", exact=True).fill(name)
    nodes_label = page.locator("label", has_text=re.compile(r"^Nodes \(Optional\)$"))
    group = page.locator("div.group").filter(has=nodes_label).last
    for i, node in enumerate(nodes):
        group.get_by_role("button", name="Add item").last.click()  # the list's, after the node's
        group.get_by_label("Address", exact=True).nth(i).fill(node["address"])
        group.get_by_label("Port (Optional)").nth(i).fill(str(node["port"]))
        roles = group.get_by_role("button", name="Select Roles").nth(i)
        for role in node["roles"]:
            roles.click()
            page.get_by_role("option", name=role, exact=True).click()
            page.keyboard.press("Escape")
        chosen = roles.locator("xpath=ancestor::fieldset[1]").inner_text().split()
        assert chosen[1:] == node["roles"], chosen  # "Select", then a badge per role


# --- the tests ---------------------------------------------------------------------------------


def test_operator_provisions_a_cluster_from_the_form_and_reads_its_artifact(ui, tmp_path):
    page, watch, lab = ui.page, ui.watch, ui.lab
    watch.shots, watch.step = tmp_path, "provision"
    environment, name = "ui", f"web{uuid.uuid4().hex[:4]}"

    open_custom_run(ui)
    labels = page.locator("label").all_inner_texts()
    assert {"Environment (Optional)", "Name", "Nodes (Optional)"} <= set(labels), labels
    class_names = [t for t in labels if re.search(r"[a-z][A-Z]", t)]
    assert not class_names, f"the form labels fields with class names: {class_names}"
    fill_spec(ui, environment, name, lab.spec["nodes"])
    watch.snapshot(page, "custom-run-form")
    page.get_by_role("button", name="Submit").click()
    page.get_by_role("button", name="View run").click()
    page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)

    # The run page follows the run; bounded by RUN_WAIT_MS.
    final = page.get_by_text(re.compile(r"^(Completed|Failed|Crashed|Cancelled)$")).first
    final.wait_for(timeout=RUN_WAIT_MS)
    watch.snapshot(page, "flow-run")
    run = lab.api("GET", f"/flow_runs/{run_id}").json()
    assert final.inner_text() == "Completed", run["state"]
    assert run["state"]["type"] == "COMPLETED" and run["state"]["message"].startswith("READY")
    sent = run["parameters"]["spec"]
    assert (sent["environment"], sent["name"]) == (environment, name)
    assert [{k: n[k] for k in ("address", "port", "roles")} for n in sent["nodes"]] == (
        lab.spec["nodes"]
    )

    # Artifacts page → key cluster-<env>-<name> → its latest version.
    key = f"cluster-{environment}-{name}"
    page.goto(f"{ui_base(page)}/artifacts")
    open_artifact_key(page, key)
    page.get_by_text(re.compile(r"^READY: ")).first.wait_for()  # visible, within the timeout
    watch.snapshot(page, "artifact-key")
    page.get_by_role("link").filter(has_text=re.compile(r"^[0-9a-f]{8}$")).first.click()
    page.get_by_role("table").wait_for()
    text = watch.snapshot(page, "artifact")
    assert f"Cluster {environment}/{name}" in text and "phase: READY" in text
    rows = [r.inner_text().split("\t") for r in page.get_by_role("row").all()[1:]]
    assert [r[0] for r in rows] == [f"{n['address']}:{n['port']}" for n in lab.spec["nodes"]]
    for row in rows:
        assert row[1] == "ok" and re.fullmatch(r"SHA256:\S{12}…", row[5]), row
    layout = page.get_by_role("table").evaluate(FITS)
    assert not layout["overlaps"] and layout["right"] <= layout["viewport"], layout
    assert layout["page_width"] <= layout["viewport"], layout  # no horizontal scrolling

    server = lab.api("GET", "/admin/settings").json()["server"]
    assert (server["analytics_enabled"], server["ui"]["show_promotional_content"]) == (False, False)

    assert watch.leaks(lab.auth_string) and watch.leaks(lab.private_key), "leak check is blind"
    watch.assert_clean()


def test_the_form_refuses_a_bad_name_and_no_run_is_created(ui, tmp_path):
    page, watch, lab = ui.page, ui.watch, ui.lab
    watch.shots, watch.step = tmp_path, "bad-name-form"
    open_custom_run(ui)
    one_node = {**lab.spec["nodes"][0], "roles": ["controlplane", "etcd", "worker"]}
    fill_spec(ui, "ui", "Bad_Name", [one_node])  # valid but for the name
    runs_before = lab.flow_run_count()

    watch.step = "bad-name"
    page.get_by_role("button", name="Submit").click()
    error = page.get_by_text(re.compile(r"'Bad_Name' does not match")).first
    error.wait_for()
    page.get_by_text(re.compile(r"^Error creating flow run")).first.wait_for()
    watch.snapshot(page, "bad-name-refused")
    assert re.search(r"/deployments/deployment/[0-9a-f-]{36}/run", page.url), page.url
    assert lab.flow_run_count() == runs_before
    watch.assert_clean()


def test_operator_finds_the_monitor_schedule_and_the_fleet_table(ui, tmp_path):
    page, watch, lab = ui.page, ui.watch, ui.lab
    watch.shots, watch.step = tmp_path, "monitor"
    clusters = sorted(
        p.parent for p in lab.state_root.glob("environments/*/clusters/*/status.json")
    )
    assert clusters, "no cluster on the lab's volume: the provision test of this module makes one"

    page.get_by_role("link", name="Deployments", exact=True).first.click()
    row = page.get_by_role("row").filter(has_text="monitor-clusters")
    row.get_by_role("link", name="default").click()
    page.get_by_text(re.compile(r"^Every 5 minutes")).first.wait_for()
    watch.snapshot(page, "monitor-deployment")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Quick run").click()
    page.get_by_role("button", name="View run").click()
    page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)
    final = page.get_by_text(re.compile(r"^(Completed|Failed|Crashed|Cancelled)$")).first
    final.wait_for(timeout=RUN_WAIT_MS)
    watch.snapshot(page, "monitor-run")
    assert final.inner_text() == "Completed", lab.api("GET", f"/flow_runs/{run_id}").json()

    page.goto(f"{ui_base(page)}/artifacts")
    open_artifact_key(page, "fleet-health")
    page.get_by_role("link").filter(has_text=re.compile(r"^[0-9a-f]{8}$")).first.click()
    page.get_by_role("table").wait_for()
    watch.snapshot(page, "fleet-table")
    header = [t.strip() for t in page.get_by_role("columnheader").all_inner_texts()]
    cells = [r.get_by_role("cell").all_inner_texts() for r in page.get_by_role("row").all()]
    shown = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in cells if r}
    for directory in clusters:
        environment, name = directory.parent.parent.name, directory.name
        recorded = json.loads((directory / "health.json").read_text())
        assert (environment, name) in shown, (header, cells)
        assert shown[(environment, name)]["verdict"].startswith(recorded["verdict"]), shown
    watch.assert_clean()
