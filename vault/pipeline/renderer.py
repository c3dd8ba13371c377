"""The version of the redaction renderer (vault/pipeline/redact.py), apart from it: the
server process needs the version for digests, not the renderer's imaging libraries."""

#: Bumped whenever what ``render_redaction`` produces from the same input could change
#: (fill, quality, thumbnail method): the version is part of every redaction digest, so a
#: new renderer voids approvals of renditions a person never saw.
RENDERER_VERSION = "fill-black/q92/thumb85/v1"
