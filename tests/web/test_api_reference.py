"""/docs: the API reference renders in a real browser from the vault alone, under its strict
CSP (no violation reported), and /docs/errors lists the error types (issue 19)."""

from __future__ import annotations


LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # Redoc's footer; img-src refuses it


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
        assert "script-src 'self';" in csp and "unsafe-eval" not in csp
        assert "style-src-elem 'self' 'nonce-" in csp and csp.count("unsafe-inline") == 1 and "style-src-attr 'unsafe-inline'" in csp
        try:
            page.get_by_role("heading", name="Create a patient").first.wait_for(timeout=60_000)
        except Exception:
            page.screenshot(path=str(artifacts / "api-reference-failed.png"))
            raise AssertionError(f"{problems} {page.content()[:3000]}") from None
        page.screenshot(path=str(artifacts / "api-reference.png"))
        # Redoc's footer asks for its logo on cdn.redoc.ly: refused by img-src, nothing leaves
        assert not [p for p in problems if ("Content Security Policy" in p or "Refused" in p)
                    and LOGO not in p], problems
        # no CDN, no fonts from elsewhere; the logo's request is the one CSP refused above
        assert set(outside) <= {LOGO}, outside
        assert [p for p in problems if LOGO in p and "blocked" in p] or LOGO not in outside
        page.goto("/docs/errors")
        page.get_by_role("heading", name="API error types").wait_for()
        assert page.locator("#consent_required").count() == 1
        page.screenshot(path=str(artifacts / "api-error-types.png"))
    finally:
        context.close()
