"""Headless Chromium driving MLflow's UI, for the browser test (tests/test_browser.py).

Selenium with the system's Chromium and its matching chromedriver (Debian: ``chromium`` + ``chromium-driver``):
both come from the same package build, so the WebDriver protocol always matches the browser, and nothing is
downloaded at run time (Playwright's own browser builds cannot be fetched here; selenium-manager is never asked,
since the driver's path is given).

MLflow 3.17's UI is a React SPA with a hash router; a run page is ``#/experiments/<eid>/runs/<rid>`` and an
artifact is ``#/experiments/<eid>/runs/<rid>/artifacts/<path>`` (routes ``/experiments/:experimentId/runs/:runUuid``
and ``.../artifactPath/*`` in mlflow/server/js/build/static/js/main.*.js). The selectors below are MLflow's own
``data-testid`` / ``data-component-id`` attributes of that build.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver",)
DRIVER_PATHS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

NOTE = '[data-testid="note-editor-preview-content"]'  # the rendered markdown of mlflow.note.content
DESCRIPTION_HEADING = "//h4[starts-with(normalize-space(.), 'Description')]"
SHOW_MORE = "//*[@data-testid='note-view-outer-container']/following::*[normalize-space(text())='Show more'][1]"
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
WAIT_S = 90.0  # first loads of the SPA on a busy 2-core machine; a wait ends as soon as the element is there


def find_browser() -> tuple[str | None, str | None]:
    """(chromium binary, chromedriver) found on PATH (or ``$CHROMIUM`` / ``$CHROMEDRIVER``), None where missing."""
    binary = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = os.environ.get("CHROMEDRIVER") or next(filter(None, map(shutil.which, DRIVER_NAMES)), None)
    if driver is None:
        driver = next((p for p in DRIVER_PATHS if os.access(p, os.X_OK)), None)
    return binary, driver


def missing_reason() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    binary, driver = find_browser()
    missing = [what for what, found in (("no Chromium binary (chromium) on PATH", binary),
                                        ("no chromedriver (Debian: chromium-driver)", driver)) if not found]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("no selenium package (the test extra: pip install -c constraints.txt -e '.[test]')")
    if missing:
        return ("; ".join(missing) + ": install Chromium with 'apt-get install chromium chromium-driver' "
                "(.ci/run does) and the test extra")
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium under chromedriver; yields the selenium WebDriver, quits it afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_browser()
    assert binary and driver_path, missing_reason()
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)  # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str, timeout: float = WAIT_S):
    """WebDriverWait(condition) with a failure message that says what was awaited and where the page was."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        body = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        raise AssertionError(f"{what}: not on the page after {timeout:.0f} s at {driver.current_url}; "
                             f"the page reads:\n{body[:2000]}") from None


def load(driver, url: str) -> None:
    """Opens ``url`` as a fresh page load, as a pasted link does: from about:blank, since a change of the hash alone
    is routed inside the running SPA (which can keep the previous page's state)."""
    driver.get("about:blank")
    driver.get(url)


def run_url(base: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")


def open_run(driver, base: str, experiment_id: str, run_id: str, run_name: str) -> None:
    """The run's overview page, waited for until the run's name and its Description box are rendered."""
    from selenium.webdriver.common.by import By

    load(driver, run_url(base, experiment_id, run_id))
    wait_for(driver, lambda d: run_name in d.find_element(By.TAG_NAME, "body").text, f"run name {run_name!r}")
    wait_for(driver, lambda d: d.find_elements(By.XPATH, DESCRIPTION_HEADING), "the run's Description box")


def description_tables(driver, timeout: float = 15.0) -> list[list[list[str]]]:
    """The tables of the run's rendered description, as a reader sees them: each a list of body rows, each a list of
    the cells' visible texts. The Description box shows a long note collapsed (a fade and "Show more"): that is
    clicked first, as a reader would. Waits up to ``timeout`` after the Description box is there (the note renders
    with it); [] when it has no table."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f"{NOTE} table"))
    except TimeoutException:
        return []
    for more in driver.find_elements(By.XPATH, SHOW_MORE):
        if more.is_displayed():
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", more)
            more.click()
            wait_for(driver, lambda d: not [m for m in d.find_elements(By.XPATH, SHOW_MORE) if m.is_displayed()],
                     "the description expanded after 'Show more'", timeout=timeout)
    tables = []
    for table in driver.find_elements(By.CSS_SELECTOR, f"{NOTE} table"):
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr") or table.find_elements(By.CSS_SELECTOR, "tr")[1:]
        tables.append([[td.text.strip() for td in tr.find_elements(By.TAG_NAME, "td")] for tr in rows])
    return tables


def description_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, NOTE))


def open_artifact_image(driver, base: str, experiment_id: str, run_id: str, path: str) -> tuple[int, int]:
    """The artifact view of the PNG ``path``; waits until MLflow's preview <img> has loaded and returns its natural
    size (width, height) in pixels (0 x 0 would be a broken image)."""
    from selenium.webdriver.common.by import By

    load(driver, run_url(base, experiment_id, run_id, path))
    selector = f'img[alt="{path}"]'
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, selector), f"the image preview of {path}")

    def loaded(d):
        img = d.find_element(By.CSS_SELECTOR, selector)
        return d.execute_script("return arguments[0].complete && [arguments[0].naturalWidth, "
                                "arguments[0].naturalHeight]", img)

    width, height = wait_for(driver, loaded, f"{path} loaded")
    return int(width), int(height)


def artifact_tree_names(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="artifact-tree-node"]')]


def close_assistant(driver) -> None:
    """Closes MLflow 3's Assistant side panel (open by default on a first visit) so screenshots show the run."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, ASSISTANT_CLOSE):
        if button.is_displayed():
            button.click()


def screenshot(driver, path: Path, element=None) -> Path:
    """A PNG of the viewport (or of ``element``, scrolled into view first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if element is not None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
    driver.save_screenshot(str(path))
    return path
