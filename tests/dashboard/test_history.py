"""Run history, validation marks, unique keys, comparisons and 'new since' exports, against the
test Redis and database (items enter through the crawl's real item stream and the ingest)."""

import json

import pytest
from django.test import Client

from crawler import keys, pipelines, scripts, state
from dashboard import engine, history, ingest, live
from dashboard.conductor import Conductor
from dashboard.models import ApiToken, Crawl, CrawlHistory, Item, Project
from tests.dashboard.factories import project_for

pytestmark = pytest.mark.django_db

FIELDS = [{"name": "sku", "selector": ".sku::text"}, {"name": "price", "selector": ".price::text"}]


def shop(owner, name="Shop", **extra):
    return project_for(owner, name, **{"item": {"fields": FIELDS}, **extra})


def crawl_of(project, status=Crawl.RUNNING):
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=status)
    state.ensure_items_group(crawl_redis(), crawl.code)
    return crawl


def crawl_redis():
    from dashboard.redis import get_redis

    return get_redis()


def push(crawl, *items, page="p"):
    """Items written to the crawl's stream the way workers write them (crawler.pipelines' script)."""
    entries = []
    for n, data in enumerate(items):
        url = data.get("url", f"http://shop.test/{page}")
        data = {"url": url, **data}
        entries.append(([f"{page}:{n}", url, json.dumps(data)], pipelines.filled_fields(data)))
    scripts.run(crawl_redis(), [pipelines.items_call(crawl.code, "w1", entries)])


def api(user, path):
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user)}")


def test_a_unique_key_keeps_the_latest_item_across_batches_and_counts_replacements(owner):
    crawl = crawl_of(shop(owner, unique_key=["sku"]))
    redis = crawl_redis()
    push(crawl, {"sku": "1", "price": "1"}, {"sku": "2", "price": "2"}, {"sku": "1", "price": "1.5"}, page="p1")
    ingest.drain_many(redis, [crawl])
    push(crawl, {"sku": "2", "price": "2.5"}, {"sku": "3", "price": "3"}, page="p2")
    ingest.drain_many(redis, [crawl])
    ingest.drain_many(redis, [crawl], recover={crawl.code})  # nothing unacked: nothing counted twice
    prices = {i.data["sku"]: i.data["price"] for i in crawl.items.all()}
    assert prices == {"1": "1.5", "2": "2.5", "3": "3"}
    view = live.crawl_view(crawl, live.read(redis, [crawl])[crawl.code])
    assert view["replaced"] == 2
    assert view["counters"]["items"] == 5  # scraped; 3 stored


def test_invalid_items_are_stored_with_their_errors_and_counted_live_and_in_the_api(owner):
    project = shop(owner, validation={"required": ["price"], "rules": [{"field": "sku", "pattern": "^[0-9]+$"}]})
    crawl = crawl_of(project)
    push(crawl, {"sku": "1", "price": "9"}, {"sku": "x2", "price": "9"}, {"sku": "3"})
    ingest.drain_many(crawl_redis(), [crawl])
    marks = {i.data["sku"]: i.errors for i in crawl.items.all()}
    assert marks == {"1": [], "x2": ["sku: does not match '^[0-9]+$'"], "3": ["price: required"]}
    assert api(owner, f"/api/crawls/{crawl.code}").json()["invalid"] == 2
    only = api(owner, f"/api/crawls/{crawl.code}/items?invalid=true").json()["items"]
    assert sorted(i["data"]["sku"] for i in only) == ["3", "x2"]
    client = Client()
    client.force_login(owner)
    page = client.get(f"/crawls/{crawl.code}/items/?invalid=1").content.decode()
    assert "price: required" in page and "x2" in page and ">1<" not in page
    exported = client.get(f"/crawls/{crawl.code}/export?format=jsonl&only=invalid")
    rows = [json.loads(line) for line in b"".join(exported.streaming_content).splitlines()]
    assert sorted(r["sku"] for r in rows) == ["3", "x2"]


def test_history_survives_cancel_and_the_loss_of_the_crawls_redis_keys(owner, settings):
    crawl = crawl_of(shop(owner))
    redis = crawl_redis()
    publisher = live.Publisher(redis)
    clock = iter(range(1000, 2000))
    publisher.clock = lambda: float(next(clock))
    redis.hset(keys.stats(crawl.code), mapping={"pages": 7, "errors": 2, "status:200": 5, "status:404": 2,
                                                "errors:download": 1, "robots_forbidden": 4})
    for _ in range(3):
        publisher.publish(crawl, state.read_counters(redis, crawl.code), [])
    redis.xadd(keys.log(crawl.code), {"worker": "w1", "level": "ERROR", "logger": "scrapy", "message": "boom",
                                      "time": "1000.5"})
    Crawl.objects.filter(pk=crawl.pk).update(status=Crawl.STOPPED)  # stopped with no final stats yet
    crawl.refresh_from_db()
    engine.control(crawl, "cancel")
    assert not list(redis.scan_iter(match=keys.crawl_pattern(crawl.code)))  # Redis forgot it

    crawl = Crawl.objects.get(pk=crawl.pk)
    kept = CrawlHistory.objects.get(crawl=crawl)
    assert len(kept.series) == 3 and kept.status_codes == {"200": 5, "404": 2}
    assert kept.errors == {"http_4xx": 2, "download": 1, "robots_forbidden": 4}
    assert [line["message"] for line in kept.log] == ["boom"]
    body = api(owner, f"/api/crawls/{crawl.code}").json()
    assert body["status"] == "cancelled" and body["counters"]["pages"] == 7 and body["counters"]["errors"] == 2
    snapshot = live.crawl_page_context(crawl)["live"]
    assert len(snapshot["series"]) == 3 and snapshot["status_codes"] == {"200": 5, "404": 2}
    assert [line["message"] for line in snapshot["log"]] == ["boom"]

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # Redis unreachable: the page still has it all
    client = Client()
    client.force_login(owner)
    page = client.get(f"/crawls/{crawl.code}/")
    assert page.status_code == 200 and len(page.context["live"]["series"]) == 3
    assert page.context["live"]["counters"]["pages"] == 7


def test_the_conductor_copies_an_active_crawls_history_periodically(owner, settings):
    settings.HISTORY_INTERVAL = 1
    crawl = crawl_of(shop(owner))
    redis = crawl_redis()
    redis.rpush(keys.series(crawl.code), json.dumps([1.0, 1, 0, 0, 0, 0, 0, 0.0, 0.0]))
    conductor = Conductor(tick=0.1)
    conductor.history.clock = iter([0.0, 5.0, 5.0]).__next__
    conductor.history.tick([crawl])  # first sight: starts the clock
    assert not CrawlHistory.objects.filter(crawl=crawl).exists()
    conductor.history.tick([crawl])
    assert CrawlHistory.objects.get(crawl=crawl).series == [[1.0, 1, 0, 0, 0, 0, 0, 0.0, 0.0]]
    redis.delete(keys.series(crawl.code))  # Redis restarted without its data: what was kept stays
    history.persist_many(redis, [crawl])
    assert len(CrawlHistory.objects.get(crawl=crawl).series) == 1


def finished_run(project, skus):
    crawl = crawl_of(project, status=Crawl.FINISHED)
    push(crawl, *[{"sku": s, "price": "1", "url": f"http://shop.test/{s}"} for s in skus])
    ingest.drain_all(crawl_redis(), crawl)
    history.record_run(crawl)
    return crawl


def test_compare_lists_the_item_keys_that_appeared_and_disappeared(owner):
    project = shop(owner, unique_key=["sku"])
    before = finished_run(project, ["a", "b", "c"])
    after = finished_run(project, ["a", "d"])
    body = api(owner, f"/api/crawls/{after.code}/compare?with={before.code}").json()
    assert body["appeared"]["count"] == 1 and body["appeared"]["first"][0]["values"] == {"sku": "d"}
    assert body["disappeared"]["count"] == 2
    assert sorted(e["values"]["sku"] for e in body["disappeared"]["first"]) == ["b", "c"]
    assert body["crawl"]["counters"]["items"] == 2 and body["other"]["counters"]["items"] == 3
    client = Client()
    client.force_login(owner)
    page = client.get(f"/crawls/{after.code}/compare/").content.decode()  # default: the previous finished run
    assert "sku=d" in page and "sku=b" in page
    new = client.get(f"/crawls/{after.code}/export?format=jsonl&only=new")
    assert [json.loads(line)["sku"] for line in b"".join(new.streaming_content).splitlines()] == ["d"]


def test_compare_refuses_other_peoples_runs_other_projects_and_bad_input(owner, outsider):
    mine = finished_run(shop(owner), ["a"])
    other_project = finished_run(shop(owner, "Other"), ["a"])
    theirs = finished_run(shop(outsider), ["a"])
    assert api(owner, f"/api/crawls/{mine.code}/compare?with={theirs.code}").status_code == 404
    assert api(outsider, f"/api/crawls/{mine.code}/compare?with={theirs.code}").status_code == 404
    refused = api(owner, f"/api/crawls/{mine.code}/compare?with={other_project.code}")
    assert refused.status_code == 422 and "another project" in refused.json()["errors"]["with"][0]
    assert api(owner, f"/api/crawls/{mine.code}/compare").status_code == 422
    client = Client()
    client.force_login(owner)
    assert client.get(f"/crawls/{mine.code}/compare/?with={theirs.code}").status_code == 404
    bad = client.get(f"/crawls/{mine.code}/export?format=jsonl&only=everything")
    assert bad.status_code == 400 and "only" in bad.json()["errors"]
    assert "Valid filters: invalid, new." in client.get(f"/crawls/{mine.code}/export?format=xlsx&only=all").json()["detail"]
    assert client.get(f"/crawls/{mine.code}/export?format=xlsx&only=new").status_code == 302  # to its Excel page


def test_the_project_page_lists_runs_with_their_numbers(owner):
    project = shop(owner, validation={"required": ["title"]}, item={"fields": FIELDS + [
        {"name": "title", "selector": "h1::text"}]})
    finished_run(project, ["a", "b"])
    client = Client()
    client.force_login(owner)
    page = client.get(f"/projects/{project.code}/").content.decode()
    assert 'data-chart="runs"' in page and 'id="runs-data"' in page
    runs = json.loads(page.split('id="runs-data" type="application/json">')[1].split("</script>")[0])
    assert runs[0]["items"] == 2 and runs[0]["invalid"] == 2


class RoundTrips:
    """A Redis client that counts its round trips (one per command, one per pipeline)."""

    def __init__(self, redis):
        self.redis = redis
        self.trips = 0

    def pipeline(self, *args, **kwargs):
        pipe = self.redis.pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*a, **kw):
            self.trips += 1
            return execute(*a, **kw)

        pipe.execute = counted
        return pipe

    def __getattr__(self, name):
        command = getattr(self.redis, name)

        def counted(*a, **kw):
            self.trips += 1
            return command(*a, **kw)

        return counted


def test_the_runs_list_shows_active_runs_live_numbers_read_in_one_round_trip(owner, settings):
    project = shop(owner, validation={"required": ["title"]}, item={"fields": FIELDS + [
        {"name": "title", "selector": "h1::text"}]})
    ended = finished_run(project, ["a", "b"])
    running, paused = crawl_of(project), crawl_of(project, status=Crawl.PAUSED)
    redis = crawl_redis()
    redis.hset(keys.stats(running.code), mapping={"pages": 12, "items": 9, "errors": 3, "invalid": 4})
    redis.hset(keys.stats(paused.code), mapping={"pages": 5, "items": 2})

    spy = RoundTrips(redis)
    runs = {run["code"]: run for run in history.project_runs(project, redis=spy)}
    assert spy.trips == 1  # both active runs in one pipelined read; the ended one from its stats
    numbers = ("live", "pages", "items", "errors", "invalid")
    assert [runs[running.code][k] for k in numbers] == [True, 12, 9, 3, 4]
    assert [runs[paused.code][k] for k in numbers] == [True, 5, 2, 0, 0]
    assert [runs[ended.code][k] for k in numbers] == [False, 0, 2, 0, 2]

    client = Client()
    client.force_login(owner)
    page = client.get(f"/projects/{project.code}/").content.decode()
    chart = {r["code"]: r for r in json.loads(page.split('id="runs-data" type="application/json">')[1]
                                                  .split("</script>")[0])}
    assert (chart[running.code]["pages"], chart[running.code]["items"], chart[running.code]["invalid"]) == (12, 9, 4)
    assert chart[running.code]["live"] is True and chart[ended.code]["live"] is False
    row = page.split(f'<tr data-run="{running.code}">')[1].split("</tr>")[0]
    assert ">live</span>" in row and '<td class="num">12</td>' in row and '<td class="num">9</td>' in row

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # Redis unreachable: the list still shows, stored numbers only
    page = client.get(f"/projects/{project.code}/")
    assert page.status_code == 200
    assert {r["code"]: r["pages"] for r in page.context["runs"]}[running.code] == 0


def test_bad_validation_input_gets_field_errors_and_nothing_is_saved(owner):
    project = shop(owner)
    token = ApiToken.issue(owner)
    definition = {**project.definition, "validation": {"schema": {"type": "object", "minProperties": "x"}}}
    response = Client().put(f"/api/projects/{project.code}", json.dumps(definition), content_type="application/json",
                            HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 422 and "validation.schema" in response.json()["errors"]
    definition = {**project.definition, "validation": {"rules": [{"field": "colour", "max_length": 3}]}}
    response = Client().put(f"/api/projects/{project.code}", json.dumps(definition), content_type="application/json",
                            HTTP_AUTHORIZATION=f"Bearer {token}")
    assert "colour" in response.json()["errors"]["validation.rules.0.field"][0]
    project.refresh_from_db()
    assert project.definition["validation"]["rules"] == [] and project.definition["validation"]["schema"] is None

    client = Client()
    client.force_login(owner)
    form = {"name": "Shop", "start_urls": "http://127.0.0.1:9/", "fields": "sku: .sku::text", "workers": "1",
            "max_depth": "0", "max_pages": "0", "max_items": "0", "max_duration": "0",
            "validation_schema": '{"type": "object", "properties": {"sku": {"pattern": "(?=x)"}}}',
            "validation_rules": "colour: max_length=3", "unique_key": "ean"}
    page = client.post(f"/projects/{project.code}/edit/", form)
    assert page.status_code == 200
    errors = page.context["form"].errors
    assert "lookahead" in errors["validation_schema"][0]
    assert errors["validation_rules"][0].startswith("Line 1:") and "colour" in errors["validation_rules"][0]
    assert "ean" in errors["unique_key"][0]
    form.update(validation_schema='{"required": ["sku"]}', validation_rules="sku: max_length=12", unique_key="sku")
    assert client.post(f"/projects/{project.code}/edit/", form).status_code == 302
    project.refresh_from_db()
    assert project.definition["unique_key"] == ["sku"]
    assert project.definition["validation"]["rules"] == [{"field": "sku", "max_length": 12}]
    assert Item.objects.count() == 0


def test_the_project_page_says_what_a_definition_leaves_to_defaults(owner):
    """The definition card names empty limits, start URLs and domains instead of leaving them blank
    (a deployed spider's project has none of them)."""
    client = Client()
    client.force_login(owner)
    page = client.get(f"/projects/{shop(owner).code}/").content.decode()
    assert "<dd class=\"small\" data-limits>none</dd>" in page
    limited = shop(owner, "Limited", limits={"max_pages": 10, "max_items": 0})
    assert "pages 10 </dd>" in client.get(f"/projects/{limited.code}/").content.decode()
    deployed = Project.for_deployed_spider(owner, "shopbot", "shop")
    deployed.definition["spider"]["args"] = {"category": "books"}
    deployed.save()
    page = client.get(f"/projects/{deployed.code}/").content.decode()
    assert page.count("the spider's own") == 2 and "category=books" in page


def test_a_run_cancelled_while_paused_keeps_its_field_coverage_and_its_monitor_sees_it(owner):
    """Cancel deletes the Redis state: the coverage counted there is kept with the other counters,
    so a coverage monitor is not failed by a 0 % that no item had."""
    project = shop(owner)
    project.monitors.create(kind="field_coverage", field="price", threshold=90)
    crawl = crawl_of(project, status=Crawl.PAUSED)
    push(crawl, {"sku": "1", "price": "1"}, {"sku": "2", "price": "2"})
    engine.control(crawl, "cancel")
    crawl.refresh_from_db()
    assert crawl.stats["coverage"] == {"price": 100.0, "sku": 100.0, "url": 100.0}
    assert [(c["kind"], c["passed"], c["value"]) for c in crawl.checks] == [("field_coverage", True, 100.0)]
