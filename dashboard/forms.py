"""The project (crawl definition) form.

It turns friendly text fields into the definition dict and hands it to the one validator,
``crawler.definition.validate``; the validator's dotted error paths come back to the form field
they belong to, with the line number where there is one.
"""

import json
import re

from django import forms
from django.conf import settings as django_settings

from crawler.definition import ALLOWED_SETTINGS, MAX_WORKERS, DefinitionError, default_definition
from dashboard import schedules
from dashboard.models import ApiToken, Package, Project, Schedule, TokenError, too_large, validate_definition

FIELD_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\[\])?\s*:\s*(\S.*)$")
LIMITS = ("max_depth", "max_pages", "max_items", "max_duration")

# Dotted path prefix of a validator error -> the form field that shows it.
ERROR_FIELDS = [
    ("name", "name"),
    ("start_urls", "start_urls"),
    ("allowed_domains", "allowed_domains"),
    ("follow.allow", "follow_allow"),
    ("follow.deny", "follow_deny"),
    ("follow", "follow_allow"),
    ("limits.max_depth", "max_depth"),
    ("limits.max_pages", "max_pages"),
    ("limits.max_items", "max_items"),
    ("limits.max_duration", "max_duration"),
    ("item.url_pattern", "item_url_pattern"),
    ("item.selector", "item_selector"),
    ("item.fields", "fields"),
    ("item", "fields"),
    ("spider.version", "spider_version"),
    ("spider.args", "spider_args"),
    ("spider", "spider"),
    ("settings", "settings"),
    ("workers", "workers"),
    ("validation.required", "required_fields"),
    ("validation.rules", "validation_rules"),
    ("validation.schema", "validation_schema"),
    ("validation", "validation_rules"),
    ("unique_key", "unique_key"),
]
LINE_FIELDS = {"start_urls", "allowed_domains", "follow_allow", "follow_deny", "fields", "required_fields",
               "validation_rules"}
RULE_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$")
RULE_TOKEN = re.compile(r"([a-z_]+)=(\S+)")


ASCII_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


def parse_whole_number(text, label, minimum, maximum):
    """A whole number typed by a user, read strictly: ASCII digits only, nothing around them.

    ``int()`` alone would take "٣" or " 3 ", and Python's ``str.isdigit()`` says yes to "²",
    which ``int()`` then refuses with an exception. Returns the number or raises ValidationError
    with a message naming ``label``.
    """
    message = f"{label} must be a whole number from {minimum} to {maximum}"
    text = text if isinstance(text, str) else ""
    if not ASCII_WHOLE_NUMBER.fullmatch(text):
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise forms.ValidationError(f"{message}, not “{shown}”.", code="invalid")
    number = int(text)
    if not minimum <= number <= maximum:
        raise forms.ValidationError(f"{message}, not {number}.", code="out_of_range")
    return number


class StrictIntegerField(forms.IntegerField):
    """An IntegerField that takes ASCII digits only: no "3.0", "1e3", "٣" or padding spaces."""

    def to_python(self, value):
        if value in self.empty_values:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not isinstance(value, str) or not ASCII_WHOLE_NUMBER.fullmatch(value):
            raise forms.ValidationError("Enter a whole number using the digits 0-9 only.", code="invalid")
        return int(value)


def _numbered(text):
    """The non-blank lines of ``text``, stripped, with their line numbers (from 1)."""
    return [(number, line.strip()) for number, line in enumerate((text or "").splitlines(), start=1) if line.strip()]


def _lines(text):
    return [line for _number, line in _numbered(text)]


def _textarea(rows=4, placeholder=""):
    return forms.Textarea(attrs={"rows": rows, "placeholder": placeholder, "spellcheck": "false"})


def parse_fields(text, numbers=None):
    """``name: selector`` per line; ``name[]: selector`` collects every match. ``numbers``, if
    given, receives the line number of each field parsed."""
    fields, problems = [], []
    for number, line in _numbered(text):
        match = FIELD_LINE.match(line)
        if not match:
            problems.append(
                f"Line {number}: write it as “name: selector” with a name of letters, digits and _, "
                "e.g. “title: h1::text”."
            )
            continue
        name, many, selector = match.groups()
        fields.append({"name": name, "selector": selector.strip(), "many": bool(many)})
        if numbers is not None:
            numbers.append(number)
    return fields, problems


def format_fields(fields):
    return "\n".join(f"{f['name']}{'[]' if f.get('many') else ''}: {f['selector']}" for f in fields)


def parse_rules(text):
    """``field: type=number min=0 max=100 pattern=^[0-9]+$`` per line (values without spaces)."""
    rules, problems = [], []
    for number, line in enumerate(_lines(text), start=1):
        match = RULE_LINE.match(line)
        tokens = RULE_TOKEN.findall(match.group(2)) if match else []
        if not match or not tokens or RULE_TOKEN.sub("", match.group(2)).strip():
            problems.append(f"Line {number}: write it as “field: type=number min=0” with key=value pairs "
                            "(type, pattern, min_length, max_length, min, max).")
            continue
        rule = {"field": match.group(1)}
        for key, raw in tokens:
            value = raw
            if key in ("min", "max", "min_length", "max_length"):
                try:
                    value = json.loads(raw)
                except ValueError:
                    pass
            rule[key] = value
        rules.append(rule)
    return rules, problems


def format_rules(rules):
    return "\n".join(rule["field"] + ": " + " ".join(f"{k}={v}" for k, v in rule.items() if k != "field")
                     for rule in rules)


def parse_settings(text):
    """``NAME = value`` per line; numbers and true/false are read as such, the rest as text."""
    values, problems = {}, []
    for number, line in _numbered(text):
        name, sep, raw = line.partition("=")
        if not sep or not name.strip():
            problems.append(f"Line {number}: write it as “NAME = value”, e.g. “DOWNLOAD_DELAY = 0.5”.")
            continue
        raw = raw.strip()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        values[name.strip()] = value
    return values, problems


def parse_spider_args(text):
    """``name=value`` per line (a deployed spider's arguments, Scrapy's -a); the value is text."""
    args, problems = {}, []
    for number, line in enumerate(_lines(text), start=1):
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            problems.append(f"Line {number}: write it as “name=value”.")
            continue
        args[name.strip()] = value.strip()
    return args, problems


def format_settings(settings):
    return "\n".join(f"{name} = {json.dumps(value) if not isinstance(value, str) else value}" for name, value in settings.items())


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Shown in the dashboard.")
    start_urls = forms.CharField(
        required=False, widget=_textarea(3, "https://example.com/"),
        help_text="One absolute http(s) URL per line (up to 1,000). A deployed spider starts from its own start().",
    )
    allowed_domains = forms.CharField(
        required=False, widget=_textarea(2, "example.com"),
        help_text="One domain per line; empty means the domains of the start URLs.",
    )
    follow_allow = forms.CharField(
        label="Follow links matching", required=False, widget=_textarea(3, "/category/"),
        help_text="One regular expression per line (RE2: no lookaround or backreferences), found anywhere in the "
        "link's URL; empty follows every link in the allowed domains.",
    )
    follow_deny = forms.CharField(
        label="Never follow links matching", required=False, widget=_textarea(2, "/login"),
        help_text="One regular expression per line (RE2), found anywhere in the link's URL.",
    )
    max_depth = StrictIntegerField(min_value=0, initial=0, help_text="Link depth; 0 = no limit.")
    max_pages = StrictIntegerField(min_value=0, initial=0, help_text="Pages crawled; 0 = no limit.")
    max_items = StrictIntegerField(min_value=0, initial=0, help_text="Items stored; 0 = no limit.")
    max_duration = StrictIntegerField(min_value=0, initial=0, help_text="Seconds; 0 = no limit.")
    item_url_pattern = forms.CharField(
        label="Item pages", required=False, help_text="Regular expression (RE2) found in the URLs of pages that hold items; empty = every page."
    )
    item_selector = forms.CharField(
        label="Item selector", required=False,
        help_text="CSS or XPath; each match is one item. Empty = one item per page.",
    )
    fields = forms.CharField(
        label="Fields", required=False, widget=_textarea(5, "title: h1::text\nprice: .price::text\ntags[]: .tag::text"),
        help_text="“name: selector” per line, CSS (with ::text, ::attr(href)) or XPath (starting with / or ( ). "
        "End a name with [] to keep every match.",
    )
    spider = forms.ChoiceField(label="Spider", required=False, choices=())
    spider_version = forms.CharField(label="Deployed version", required=False, max_length=100,
                                     help_text="For a deployed spider: the version to run; empty = the latest.")
    spider_args = forms.CharField(
        label="Spider arguments", required=False, widget=_textarea(2, "category=books"),
        help_text="For a deployed spider: “name=value” per line, passed as Scrapy's -a name=value.",
    )
    settings = forms.CharField(
        label="Scrapy settings", required=False, widget=_textarea(3, "CONCURRENT_REQUESTS = 16\nDOWNLOAD_DELAY = 0.25"),
        help_text="“NAME = value” per line. Allowed: " + ", ".join(sorted(ALLOWED_SETTINGS)) + ". "
        "CONCURRENT_REQUESTS is per worker; CONCURRENT_REQUESTS_PER_DOMAIN (requests in flight to one domain), "
        "DOWNLOAD_DELAY (seconds between two requests to one domain) and AutoThrottle hold for the whole crawl, "
        "all its workers together.",
    )
    workers = StrictIntegerField(min_value=1, max_value=MAX_WORKERS, initial=1, help_text="Workers per crawl.")
    unique_key = forms.CharField(
        label="Unique item key", required=False, max_length=400, widget=forms.TextInput(attrs={"placeholder": "upc"}),
        help_text="Optional field name(s), comma-separated, that make an item unique within a run: a later item "
        "with the same key replaces the earlier one (counted as replaced). Also how runs are compared.",
    )
    required_fields = forms.CharField(
        label="Required fields", required=False, max_length=10_000, widget=_textarea(2, "title\nprice"),
        help_text="One field name per line: an item without a value for it is invalid (kept, marked, counted).",
    )
    validation_rules = forms.CharField(
        label="Field rules", required=False, max_length=20_000,
        widget=_textarea(3, "price: type=number min=0 max=100000\nsku: pattern=^[0-9]{12}$ max_length=12"),
        help_text="“field: key=value …” per line, values without spaces (write \\s in a pattern). Keys: type "
        "(string, number, integer, boolean, list; a number may be text like “12.50”), pattern (RE2, found "
        "anywhere), min_length, max_length, min, max.",
    )
    validation_schema = forms.CharField(
        label="JSON Schema", required=False, max_length=40_000, widget=_textarea(4, '{"type": "object", "required": ["title"]}'),
        help_text="Optional JSON Schema (2020-12) every item must match, checked with the jsonschema library. "
        "Patterns run on RE2; only references inside the schema (#...) are allowed; at most 32 KiB.",
    )

    BUILT_IN = ("", "Built-in: extract the fields above")
    DEPLOYED = "deployed:"  # choice values of deployed spiders: deployed:PACKAGE/SPIDER

    def __init__(self, *args, owner=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        installed = sorted(django_settings.CRAWLSITE_SPIDERS)
        choices = [self.BUILT_IN] + [(name, name) for name in installed]
        for package, versions in (Package.catalog(owner) if owner is not None else {}).items():
            spiders = sorted({spider for names in versions.values() for spider in names})
            choices += [(f"{self.DEPLOYED}{package}/{spider}", f"{package}: {spider} (deployed)") for spider in spiders]
        current = self.initial.get("spider") or ""
        if current and current not in installed:
            # An old dotted path, or a spider the operator removed: kept as a choice so that
            # saving it shows why it is refused rather than silently switching spiders.
            choices.append((current, f"{current} (not installed)"))
        self.fields["spider"].choices = choices
        self.fields["spider"].help_text = (
            "Or one of the custom spiders installed by the operator of this site: it replaces the fields above."
            if installed else "No custom spiders are installed on this site (the operator's CRAWLSITE_SPIDERS).")

    @classmethod
    def initial_from(cls, definition):
        d = {**default_definition(), **definition}
        return {
            "name": d["name"],
            "start_urls": "\n".join(d["start_urls"]),
            "allowed_domains": "\n".join(d["allowed_domains"]),
            "follow_allow": "\n".join(d["follow"].get("allow", [])),
            "follow_deny": "\n".join(d["follow"].get("deny", [])),
            **{limit: d["limits"].get(limit, 0) for limit in LIMITS},
            "item_url_pattern": d["item"].get("url_pattern", ""),
            "item_selector": d["item"].get("selector", ""),
            "fields": format_fields(d["item"].get("fields", [])),
            "spider": (f"{cls.DEPLOYED}{d['spider']['package']}/{d['spider']['spider']}"
                       if isinstance(d["spider"], dict) else d["spider"]),
            "spider_version": d["spider"].get("version", "") if isinstance(d["spider"], dict) else "",
            "spider_args": "\n".join(f"{k}={v}" for k, v in d["spider"].get("args", {}).items())
            if isinstance(d["spider"], dict) else "",
            "settings": format_settings(d["settings"]),
            "workers": d["workers"],
            "unique_key": ", ".join(d.get("unique_key") or []),
            "required_fields": "\n".join((d.get("validation") or {}).get("required") or []),
            "validation_rules": format_rules((d.get("validation") or {}).get("rules") or []),
            "validation_schema": json.dumps(d["validation"]["schema"], indent=2)
            if (d.get("validation") or {}).get("schema") else "",
        }

    def clean(self):
        """Every problem of the submit at once: the fields Django could not read, the lines that
        are not “name: selector” or “NAME = value”, and every error of the validator, each next
        to its field (and line). A field already marked keeps its first error only."""
        data = super().clean()
        field_lines = []
        fields, field_problems = parse_fields(data.get("fields"), field_lines)
        settings, setting_problems = parse_settings(data.get("settings"))
        for problem in field_problems:
            self.add_error("fields", problem)
        for problem in setting_problems:
            self.add_error("settings", problem)
        self.line_numbers = {
            "fields": field_lines,
            **{name: [n for n, _line in _numbered(data.get(name))]
               for name in ("start_urls", "allowed_domains", "follow_allow", "follow_deny")},
        }
        rules, rule_problems = parse_rules(data.get("validation_rules"))
        for problem in rule_problems:
            self.add_error("validation_rules", problem)
        schema = None
        if (data.get("validation_schema") or "").strip():
            try:
                schema = json.loads(data["validation_schema"])
            except ValueError as exc:
                self.add_error("validation_schema", f"Not valid JSON: {exc}.")
        raw = {
            "name": data.get("name", ""),
            "start_urls": _lines(data.get("start_urls")),
            "allowed_domains": _lines(data.get("allowed_domains")),
            "follow": {"allow": _lines(data.get("follow_allow")), "deny": _lines(data.get("follow_deny"))},
            "limits": {limit: data[limit] for limit in LIMITS if data.get(limit) is not None},
            "item": {"url_pattern": data.get("item_url_pattern", ""), "selector": data.get("item_selector", ""),
                     "fields": fields},
            "spider": self.chosen_spider(data),
            "settings": settings,
            "workers": data["workers"] if data.get("workers") is not None else 1,
            "validation": {"required": _lines(data.get("required_fields")), "rules": rules, "schema": schema},
            "unique_key": [part.strip() for part in (data.get("unique_key") or "").split(",") if part.strip()],
        }
        marked = set(self.errors)
        try:
            definition = validate_definition(raw, owner=self.owner)
        except DefinitionError as exc:
            self.add_definition_errors(exc.errors, skip=marked)
        else:
            if not self.errors:
                data["definition"] = definition
        return data

    def chosen_spider(self, data):
        """The definition's ``spider``: an operator spider's name, or a deployed spider's object."""
        value = data.get("spider", "")
        if not value.startswith(self.DEPLOYED):
            return value
        package, _, spider = value[len(self.DEPLOYED):].partition("/")
        args, problems = parse_spider_args(data.get("spider_args"))
        for problem in problems:
            self.add_error("spider_args", problem)
        return {"package": package, "spider": spider, "version": data.get("spider_version", ""), "args": args}

    def field_for(self, path):
        """The form field that shows a validator error at dotted ``path``."""
        return next((f for prefix, f in ERROR_FIELDS if path == prefix or path.startswith(prefix + ".")), None)

    def add_definition_errors(self, errors, skip=()):
        """Put the validator's errors next to their fields: ``Line N:`` for a line of a text
        area, ``NAME:`` for a setting. A whole-field error of a field in ``skip`` (already marked
        by the form itself, e.g. “required”) is left out: it would repeat it."""
        numbers = getattr(self, "line_numbers", {})
        for path, messages in sorted(errors.items()):
            field = self.field_for(path)
            rest = path.split(".")
            index = next((int(p) for p in rest if p.isdigit()), None)
            if field in skip and index is None and not (field == "settings" and len(rest) > 1):
                continue
            where = ""
            if field in LINE_FIELDS and index is not None:
                lines = numbers.get(field) or []
                where = f"Line {lines[index] if index < len(lines) else index + 1}: "
            elif field == "settings" and len(rest) > 1:
                where = f"{rest[1]}: "
            for message in messages:
                self.add_error(field, f"{where}{message}")


class DefinitionImportForm(forms.Form):
    """“Import” on the new-project page: a definition file as “Export definition” writes it (or
    the body of ``POST /api/projects``), checked by the one validator."""

    file = forms.FileField(label="Definition file (.json)")

    def __init__(self, *args, owner=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner  # a definition naming a deployed spider must name one of the owner's

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = django_settings.DEFINITION_IMPORT_MAX_BYTES
        if upload.size > limit:
            raise forms.ValidationError(f"The file is {upload.size:,} bytes; at most {limit:,} bytes are accepted.")
        raw = upload.read(limit + 1)
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise forms.ValidationError(f"The file is not JSON ({exc}).") from None
        except RecursionError:
            raise forms.ValidationError("The file is not a crawl definition: it is nested too deeply.") from None
        if not isinstance(data, dict):
            raise forms.ValidationError("The file must hold one JSON object: a crawl definition.")
        try:
            self.cleaned_data["definition"] = validate_definition(data, owner=self.owner)
        except DefinitionError as exc:
            raise forms.ValidationError(
                [f"{path}: {' '.join(messages)}" for path, messages in sorted(exc.errors.items())]) from None
        return upload


class UploadForm(forms.Form):
    """A new version of a deployed Scrapy project, uploaded from the Code page."""

    package = forms.CharField(max_length=64, help_text="The project's name (Scrapyd's “project”), e.g. “shopbot”.")
    version = forms.CharField(max_length=100, help_text="A new name for this version, e.g. “r23” or “2026-12-01”.")
    file = forms.FileField(label="Egg or zip", help_text="A zip of the folder that holds scrapy.cfg, or an egg "
                                                          "built by “scrapyd-deploy --build-egg”.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > django_settings.CRAWLSITE_MAX_PACKAGE_BYTES:
            raise forms.ValidationError(too_large(upload.size))
        return upload


class RunForm(forms.Form):
    """Run a deployed spider: its version, workers and arguments (Scrapy's -a name=value)."""

    spider = forms.CharField(max_length=128)
    version = forms.CharField(max_length=100, required=False, help_text="Empty: the latest.")
    workers = StrictIntegerField(min_value=1, max_value=MAX_WORKERS, initial=1)
    args = forms.CharField(label="Arguments", required=False, widget=_textarea(2, "category=books"),
                           help_text="“name=value” per line.")

    def clean_args(self):
        args, problems = parse_spider_args(self.cleaned_data.get("args"))
        if problems:
            raise forms.ValidationError(problems)
        return args


class TokenForm(forms.Form):
    """A new API token on the account page: a name and an expiry chosen from a short list."""

    name = forms.CharField(max_length=ApiToken.NAME_MAX, help_text="What it is for, e.g. “nightly export script”.")
    expires = forms.ChoiceField(choices=ApiToken.EXPIRY_CHOICES, initial="90d", label="Expires after")

    def clean_name(self):
        try:
            return ApiToken.clean_name(self.cleaned_data["name"])
        except TokenError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_expires(self):
        return ApiToken.parse_expiry(self.cleaned_data["expires"])


class ProjectAdminForm(forms.ModelForm):
    """The admin edits the definition as JSON, checked by the same validator."""

    class Meta:
        model = Project
        fields = ["owner", "definition"]

    def clean_definition(self):
        try:
            return validate_definition(self.cleaned_data["definition"])
        except DefinitionError as exc:
            raise forms.ValidationError([f"{path}: {' '.join(msgs)}" for path, msgs in sorted(exc.errors.items())])

    def save(self, commit=True):
        self.instance.set_definition(self.cleaned_data["definition"])
        return super().save(commit)



class ScheduleForm(forms.Form):
    """A schedule on the project page; checked by the one validator (dashboard.schedules.validate),
    whose messages land next to their fields."""

    cron = forms.CharField(max_length=100, label="Cron", help_text="Five fields (minute hour day month weekday), "
                           "e.g. “30 2 * * *”, or @hourly, @daily, @weekly, @monthly.")
    timezone = forms.CharField(max_length=64, initial="UTC", label="Time zone",
                               help_text="IANA name, e.g. Europe/Berlin; the cron is read in this zone.",
                               widget=forms.TextInput(attrs={"list": "timezones", "autocomplete": "off"}))
    workers = StrictIntegerField(required=False, label="Workers",
                                 help_text=f"1 to {MAX_WORKERS}; empty = the definition's.")
    overlap = forms.ChoiceField(choices=Schedule.OVERLAP_CHOICES, initial=Schedule.OVERLAP_SKIP,
                                label="If the previous run is still active")
    catch_up = forms.ChoiceField(choices=Schedule.CATCH_UP_CHOICES, initial=Schedule.CATCH_UP_ONCE,
                                 label="Fires missed while the conductor was down")
    max_runtime = StrictIntegerField(required=False, label="Maximum run time (seconds)",
                                     help_text="The run is stopped (queue kept) after this; empty = no limit.")
    enabled = forms.BooleanField(required=False, initial=True, label="Enabled")

    @classmethod
    def initial_from(cls, schedule):
        return {field: getattr(schedule, field) for field in schedules.FIELDS}

    def clean(self):
        data = super().clean()
        # Fields that failed their own check are left out (and keep that error): the others are
        # still checked, so one submit names every bad field.
        payload = {field: data[field] for field in schedules.FIELDS if field in data}
        try:
            self.cleaned_schedule = schedules.validate(payload)
        except schedules.ScheduleError as exc:
            for field, messages in exc.errors.items():
                if field not in self.errors:
                    self.add_error(field if field in self.fields else None, messages)
        return data
