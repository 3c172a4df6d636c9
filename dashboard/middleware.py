"""Content Security Policy: the browser runs only our own static scripts.

Scraped content is shown on every page; even if some template escaped it wrongly, an injected
``<script>`` or ``onerror=`` attribute would not run. django-rq's staff-only pages carry inline
scripts of their own, so they get the same policy with inline scripts allowed.
"""

POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
THIRD_PARTY_POLICY = POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")
THIRD_PARTY_PREFIXES = ("/rq/",)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            third_party = request.path.startswith(THIRD_PARTY_PREFIXES)
            response["Content-Security-Policy"] = THIRD_PARTY_POLICY if third_party else POLICY
        return response
