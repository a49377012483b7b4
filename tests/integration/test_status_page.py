"""
The operator's status page, as an admin uses it: the link from the ad-hoc command
over a real XMPP client, opened in headless Chromium (Debian's chromium and
chromedriver), the figures changing after a message without a reload, a
screenshot kept. And the login's edges: no session, a spent or foreign token,
a non-admin, secrets never on the page.
"""

import os
import re
import urllib.error
import urllib.parse
import urllib.request

from gateway.testing.process import wait_for
from tests.integration.gateway_fixture import registered_client, start_gateway
from tests.integration.harness import Client, body, http_get, run

NS_COMMANDS = "http://jabber.org/protocol/commands"


async def status_link(client: Client, domain: str) -> str:
    import xml.etree.ElementTree as ET

    answer = await client.iq(domain, "set", f"<command xmlns='{NS_COMMANDS}' node='status-page' action='execute'/>")
    text = ET.tostring(answer, encoding="unicode")
    found = re.search(r"(http://127\.0\.0\.1:\d+/status/login\?token=[A-Za-z0-9_\-]+)", text)
    assert found, text
    return found.group(1)


def post(url: str, fields: dict) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kw):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def get_with_cookie(url: str, cookie: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_status_page_login_and_live_figures_in_chromium(prosody, fresh_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    admin_name = f"statusadmin{os.getpid()}"
    gateway = start_gateway(prosody, fresh_dir, "status", web=True, admins=[f"{admin_name}@localhost"],
                            options={"rejecting": ["wall"]})
    base = f"http://127.0.0.1:{gateway.web_port}"
    shots = os.path.join(fresh_dir, "status-page.png")
    driver = None
    try:
        # Without a session: nothing but how to log in.
        status, page = http_get(base + "/")
        assert status == 401 and "status-page" in page and "registered" not in page
        assert http_get(base + "/status.json")[0] == 401

        async def links():
            admin = await registered_client(prosody, gateway.domain, "statusadmin", Client)
            user = await registered_client(prosody, gateway.domain, "statususer", Client)
            try:
                condition, _ = await user.iq_error(gateway.domain, "set", f"<command xmlns='{NS_COMMANDS}' "
                                                   "node='status-page' action='execute'/>")
                assert condition == "forbidden"
                return await status_link(admin, gateway.domain), await status_link(admin, gateway.domain)
            finally:
                await user.stop()
                await admin.stop()

        link, spare = run(links())
        assert link.startswith(base + "/status/login?token=")

        # A link preview (GET) does not log in or spend the token.
        status, page = http_get(spare)
        assert status == 200 and "<form" in page and "Set-Cookie" not in page
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(spare).query)["token"][0]
        status, headers, _ = post(base + "/status/login", {"token": token})
        assert status == 303
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        status, _, page = post(base + "/status/login", {"token": token})
        assert status == 403 and "used already" in page                            # once only
        status, _, _ = post(base + "/status/login", {"token": "forged-token"})
        assert status == 403
        session = cookie.split(";")[0]
        status, report = get_with_cookie(base + "/status.json", session)
        assert status == 200 and '"components"' in report
        status, _ = get_with_cookie(base + "/status.json", session + "x")
        assert status == 401
        for secret in (gateway.key, "status-component-secret"):
            assert secret not in report

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1200,900"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.set_page_load_timeout(60)
        driver.get(link)
        driver.find_element(By.ID, "login").click()
        wait_for(lambda: driver.current_url.rstrip("/") == base and "version" in
                 driver.find_element(By.ID, "meta").text, 60, "the status page after login")

        def table(name: str) -> list[list[str]]:
            """The table's cells read in one script: the page re-renders it every 2 s."""
            return driver.execute_script(
                "return [...document.querySelectorAll(arguments[0])].map("
                "r => [...r.cells].map(c => c.textContent))", f"#{name} tbody tr")

        def cell(row_text: str, column: int) -> str:
            return next((row[column] for row in table("components") if row and row[0] == row_text), "")

        wait_for(lambda: cell(gateway.domain, 2) == "up", 30, "the component shown up")
        before = cell(gateway.domain, 8)
        users = cell(gateway.domain, 3)
        assert users == "2" and before.count("/") == 1

        async def traffic():
            client = await registered_client(prosody, gateway.domain, "statustraffic", Client)
            try:
                client.send_chat(f"echo@{gateway.domain}", "counted on the page")
                await client.next_message(lambda m: body(m) == "counted on the page")
                client.send_chat(f"wall@{gateway.domain}", "refused")
                await client.next_message(lambda m: m.get("type") == "error")
            finally:
                await client.stop()

        run(traffic())
        wait_for(lambda: cell(gateway.domain, 8) != before and cell(gateway.domain, 3) == "3", 30,
                 "the figures changed without a reload")
        wait_for(lambda: [gateway.domain, "not-acceptable", "1"] in table("errors"), 30, "the error by condition")
        assert driver.execute_script("return performance.getEntriesByType('navigation').length") == 1
        source = driver.page_source
        for secret in (gateway.key, "status-component-secret"):
            assert secret not in source
        driver.save_screenshot(shots)
        assert os.path.getsize(shots) > 10000
        print(f"status page screenshot: {shots}")
    finally:
        if driver is not None:
            driver.quit()
        gateway.stop()
    log = gateway.log()
    assert "/status/login" in log                      # the access log has the requests...
    for secret in (token, session.split("=", 1)[1], link.split("token=")[1]):
        assert secret not in log                      # ...but no login token or session
