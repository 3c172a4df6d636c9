"""A user's own Scrapy project, end to end (issue 13): written by the test, deployed with the real
`scrapyd-deploy` to the live server's /scrapyd/, scheduled through schedule.json on two workers,
one of which is SIGKILLed mid-crawl; run again at its first version after a second is deployed,
with a start() that waits before its first request (the crawl is not taken for finished).
A Scrapyd client library no one here wrote (python-scrapyd-api) lists projects, spiders and jobs.

Real components: uvicorn serving Crawlsite in a thread, RQ burst workers running
`python -m crawler`, the embedded Redis, a demo site served by the test, the conductor ticked by
the test (tests/dashboard/test_control.py's Driver).
"""

import requests
import psutil
import pytest
from scrapyd_api import ScrapydAPI
from scrapyd_api.constants import DEFAULT_ENDPOINTS

from crawler import state
from dashboard.models import ApiToken, Crawl, PackageVersion
from demosite import start_site
from demosite.catalog import Profile
from tests.dashboard.deployed_project import scrapyd_deploy, write_project
from tests.dashboard.test_control import crawler_processes, driver, procs  # noqa: F401 - fixtures
from tests.dashboard.test_engine import check_items_exactly_once
from tests.servers import ThreadedServer
from tests.workers import start_rq_workers

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT_TTL = 1.5
SHOP = Profile("deploy", categories=3, products_per_category=10, per_page=5, traps=False)


@pytest.fixture
def site():
    site = start_site(profile=SHOP, delay_ms=100)  # pages in flight when a worker is killed
    yield site
    site.stop()


@pytest.fixture
def server(transactional_db):
    server = ThreadedServer().start()
    yield server
    server.stop()


@pytest.fixture
def deployer(staff):
    return staff, ApiToken.issue(staff)


def call(server, auth, name, method="get", **params):
    send = requests.post if method == "post" else requests.get
    key = "data" if method == "post" else "params"
    response = send(f"{server.url}/scrapyd/{name}", auth=auth, timeout=30, **{key: params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok", body
    return body


def job_state(server, auth, code):
    jobs = call(server, auth, "listjobs.json", project="shopbot")
    return next(state for state in ("pending", "running", "finished") if code in {j["id"] for j in jobs[state]})


def test_scrapyd_deploy_schedule_two_workers_one_killed_then_first_version_again(
        tmp_path, server, site, deployer, driver, procs, redis_client):
    user, token = deployer
    auth = (user.username, token)
    folder = write_project(tmp_path / "shopbot", url=f"{server.url}/scrapyd/", username=user.username,
                           password=token, stamp="v1")
    deployed = scrapyd_deploy(folder, "v1")
    assert deployed.returncode == 0, deployed.stderr
    assert '"status": "ok"' in deployed.stdout and '"spiders": 2' in deployed.stdout, deployed.stdout

    scheduled = call(server, auth, "schedule.json", "post", project="shopbot", spider="shop", _workers="2",
                     site=site.url, label="from-scrapyd", setting="CONCURRENT_REQUESTS=4")
    code = scheduled["jobid"]
    crawl = Crawl.objects.get(code=code)
    assert crawl.trigger == Crawl.TRIGGER_SCRAPYD and crawl.workers == 2
    assert crawl.definition["operator"]["package"]["version"] == "v1"
    assert job_state(server, auth, code) == "pending"  # no RQ worker yet

    procs.extend(start_rq_workers(2, CRAWLSITE_HEARTBEAT_TTL=str(HEARTBEAT_TTL)))
    driver.until_workers_running(crawl, 2)
    assert job_state(server, auth, code) == "running"
    driver.until(lambda: state.read_counters(redis_client, code)["items"] >= 5, what="5 items")
    victims = crawler_processes(code, "w1")
    assert victims, "worker w1's crawler process not found"
    for victim in victims:
        victim.kill()  # SIGKILL: its leases come back when its heartbeat expires
    psutil.wait_procs(victims, timeout=10)

    driver.until_status(crawl, Crawl.FINISHED, Crawl.FAILED, Crawl.STOPPED, timeout=120)
    assert crawl.status == Crawl.FINISHED, crawl.reason
    assert job_state(server, auth, code) == "finished"
    check_items_exactly_once(crawl, site)
    assert {(i.data["stamp"], i.data["label"]) for i in crawl.items.all()} == {("v1", "from-scrapyd")}

    # A second version (another stamp), then the first one run again with _version.
    write_project(folder, url=f"{server.url}/scrapyd/", username=user.username, password=token, stamp="v2")
    assert scrapyd_deploy(folder, "v2").returncode == 0
    assert call(server, auth, "listversions.json", project="shopbot")["versions"] == ["v1", "v2"]
    # Its start() waits 3 s before its first request: longer than the conductor's idle grace.
    again = call(server, auth, "schedule.json", "post", project="shopbot", spider="shop", _version="v1",
                 site=site.url, start_delay="3")["jobid"]
    rerun = Crawl.objects.get(code=again)
    procs.extend(start_rq_workers(1, CRAWLSITE_HEARTBEAT_TTL=str(HEARTBEAT_TTL)))
    driver.until_status(rerun, Crawl.FINISHED, Crawl.FAILED, Crawl.STOPPED, timeout=120)
    assert rerun.status == Crawl.FINISHED, rerun.reason
    assert {i.data["stamp"] for i in rerun.items.all()} == {"v1"}
    assert rerun.items.count() == len(site.expected_items())
    assert rerun.project_id == crawl.project_id  # one project per (package, spider)

    # A Scrapyd client library lists projects, spiders and jobs.
    # Its endpoints are absolute paths: the documented way to serve them under a prefix.
    client = ScrapydAPI(server.url, auth=auth,
                        endpoints={name: "/scrapyd" + path for name, path in DEFAULT_ENDPOINTS.items()})
    assert client.list_projects() == ["shopbot"]
    assert client.list_spiders("shopbot") == ["other", "shop"]
    jobs = client.list_jobs("shopbot")
    assert {j["id"] for j in jobs["finished"]} == {code, again}
    assert client.job_status("shopbot", again) == "finished"
    assert PackageVersion.objects.filter(package__name="shopbot").count() == 2
