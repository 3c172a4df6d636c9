import pytest

from crawler.definition import ALLOWED_SETTINGS, DefinitionError, default_definition, validate

FIELD = {"name": "title", "selector": "h1::text", "many": False}


def good(**over):
    d = {"name": "Shop", "start_urls": ["http://example.com/"], "item": {"fields": [dict(FIELD)]}}
    d.update(over)
    return d


def errors_of(data):
    with pytest.raises(DefinitionError) as exc:
        validate(data)
    return exc.value.errors


def test_minimal_definition_gets_defaults_and_derived_domains():
    d = validate(good())
    assert d["allowed_domains"] == ["example.com"]
    assert d["limits"] == {"max_depth": 0, "max_pages": 0, "max_items": 0, "max_duration": 0}
    assert d["follow"] == {"allow": [], "deny": []}
    assert d["workers"] == 1 and d["spider"] == "" and d["settings"] == {}
    assert set(default_definition()) == set(d)


@pytest.mark.parametrize("name, message", [("", "required"), ("x" * 201, "200"), (5, "string")])
def test_name_rules(name, message):
    assert message in " ".join(errors_of(good(name=name))["name"])


def test_start_urls_required_absolute_http_with_host():
    assert "start_urls" in errors_of(good(start_urls=[]))
    assert "start_urls" in errors_of(good(start_urls="http://example.com/"))
    errs = errors_of(good(start_urls=["http://example.com/", "ftp://example.com/", "/relative", "http:///nohost"]))
    assert set(errs) == {"start_urls.1", "start_urls.2", "start_urls.3"}
    assert "start_urls" in errors_of(good(start_urls=[f"http://example.com/{i}" for i in range(1001)]))


def test_start_url_outside_allowed_domains_is_an_error():
    errs = errors_of(good(start_urls=["http://a.com/", "http://b.a.com/", "http://c.org/"], allowed_domains=["a.com"]))
    assert list(errs) == ["start_urls.2"]
    assert "allowed_domains.0" in errors_of(good(allowed_domains=["http://a.com/"]))


def test_follow_regexes_must_compile_and_errors_name_the_index():
    errs = errors_of(good(follow={"allow": ["/ok/", "(unclosed"], "deny": ["[z-a]"]}))
    assert set(errs) == {"follow.allow.1", "follow.deny.0"}
    assert "missing )" in errs["follow.allow.1"][0]


@pytest.mark.parametrize("key", ["max_depth", "max_pages", "max_items", "max_duration"])
@pytest.mark.parametrize("value", [-1, 1.5, "3", True, 10 ** 12])
def test_limits_are_bounded_non_negative_ints(key, value):
    assert f"limits.{key}" in errors_of(good(limits={key: value}))


def test_item_rules():
    fields = [
        {"name": "title", "selector": "h1::text"},
        {"name": "bad", "selector": "h1[[["},
        {"name": "x", "selector": "//div[@"},
        {"name": "url", "selector": "a::attr(href)"},
        {"name": "title", "selector": "h2"},
        {"name": "9lives", "selector": "(//a)[1]/@href"},
        {"name": "tags", "selector": "a::text", "many": "yes"},
    ]
    errs = errors_of(good(item={"url_pattern": "(", "selector": "div[", "fields": fields}))
    assert {"item.url_pattern", "item.selector", "item.fields.1.selector", "item.fields.2.selector",
            "item.fields.3.name", "item.fields.4.name", "item.fields.5.name", "item.fields.6.many"} == set(errs)
    assert "item.fields" in errors_of(good(item={"fields": [dict(FIELD)] * 101}))


def test_valid_css_and_xpath_selectors_pass():
    fields = [{"name": "a", "selector": "a::attr(href)", "many": True},
              {"name": "b", "selector": "//h1/text()"}, {"name": "c", "selector": "(//p)[2]"}]
    d = validate(good(item={"url_pattern": "/product/", "selector": ".card", "fields": fields}))
    assert [f["many"] for f in d["item"]["fields"]] == [True, False, False]


def test_fields_required_without_a_custom_spider():
    assert "item.fields" in errors_of(good(item={"fields": []}))
    d = validate(good(item={"fields": []}, spider="shop"), spiders={"shop": "x.y.Shop"})
    assert d["spider"] == "shop"


def test_spider_must_be_an_installed_name():
    installed = {"shop": "x.y.Shop", "news": "x.y.News"}
    message = errors_of_with(good(spider="nosuch.module.Spider"), installed)["spider"][0]
    assert "by name" in message and "Available: news, shop" in message
    assert "Unknown spider 'blog'" in errors_of_with(good(spider="blog"), installed)["spider"][0]
    assert "none" in errors_of(good(spider="shop"))["spider"][0]  # nothing installed


def errors_of_with(data, spiders):
    with pytest.raises(DefinitionError) as exc:
        validate(data, spiders=spiders)
    return exc.value.errors


def test_settings_whitelist_types_and_ranges():
    d = validate(good(settings={"CONCURRENT_REQUESTS": 8, "DOWNLOAD_DELAY": 1, "ROBOTSTXT_OBEY": False}))
    assert d["settings"] == {"CONCURRENT_REQUESTS": 8, "DOWNLOAD_DELAY": 1.0, "ROBOTSTXT_OBEY": False}
    errs = errors_of(good(settings={"FOO": 1, "CONCURRENT_REQUESTS": 0, "RETRY_TIMES": "2",
                                    "COOKIES_ENABLED": 1, "USER_AGENT": "x" * 501}))
    assert set(errs) == {"settings.FOO", "settings.CONCURRENT_REQUESTS", "settings.RETRY_TIMES",
                         "settings.COOKIES_ENABLED", "settings.USER_AGENT"}
    assert "FOO" in errs["settings.FOO"][0]
    assert all("help" in spec for spec in ALLOWED_SETTINGS.values())


@pytest.mark.parametrize("workers", [0, 65, "2", 1.0])
def test_workers_between_1_and_64(workers):
    assert "workers" in errors_of(good(workers=workers))


def test_unknown_top_level_keys_are_errors():
    assert "colour" in errors_of(good(colour="red"))


def test_many_errors_reported_at_once():
    errs = errors_of({"name": "", "start_urls": [], "workers": 0})
    assert {"name", "start_urls", "workers", "item.fields"} <= set(errs)


def test_regexes_that_are_not_text_are_refused_not_crashed_on():
    errs = errors_of(good(follow={"allow": ["\ud800"]}, item={"url_pattern": "x" * 2001, "fields": [dict(FIELD)]}))
    assert "lone surrogate" in errs["follow.allow.0"][0]
    assert "2000" in errs["item.url_pattern"][0]
