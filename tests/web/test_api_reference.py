"""/docs: the API reference renders in a real browser from the vault alone, under its strict
CSP (no violation reported), and /docs/errors lists the error types (issue 19)."""

from __future__ import annotations


def test_reference_renders_under_its_csp(browser_type, vault, artifacts):
    context = browser_type.new_context(base_url=vault.base)
    page = context.new_page()
    problems: list[str] = []
    outside: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("request", lambda request: None if request.url.startswith(vault.base) or request.url.startswith(("blob:", "data:"))
            else outside.append(request.url))
    try:
        response = page.goto("/docs")
        assert response is not None and response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        page.get_by_role("heading", name="Create a patient").first.wait_for(timeout=60_000)
        page.get_by_text("Upload a photo or video").first.wait_for()
        page.screenshot(path=str(artifacts / "api-reference.png"))
        assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
        assert not outside, outside  # no CDN, no fonts from elsewhere
        page.goto("/docs/errors")
        page.get_by_role("heading", name="API error types").wait_for()
        assert page.locator("#consent_required").count() == 1
        page.screenshot(path=str(artifacts / "api-error-types.png"))
    finally:
        context.close()
