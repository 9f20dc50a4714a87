"""GET /: the chat page, plain static files that call the API like any other client (PLAYGROUND=0 turns it off)."""

from pathlib import Path

from flask import Blueprint, send_from_directory

from app.openapi import undocumented

PAGE_FOLDER = Path(__file__).resolve().parent.parent / "static" / "playground"

# The page's script and style are served under /playground/; "/" is its HTML.
bp = Blueprint("playground", __name__, static_folder=str(PAGE_FOLDER), static_url_path="/playground")

# The page loads nothing but its own files and talks to nothing but this server; no inline script,
# no framing (the API key field must not be clickjacked).
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@bp.get("/")
@undocumented
def page():
    return send_from_directory(PAGE_FOLDER, "index.html")


@bp.after_request
def security_headers(response):
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
