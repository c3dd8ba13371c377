"""What may remain after stripping: an allow-list of exiftool groups and tag names."""

from __future__ import annotations

from tests.pipeline.samples import MARKER_BYTES

# Groups describing structure (sizes, codecs, colour); everything else is a leak.
_STRUCTURAL_GROUPS = {"ExifTool", "File", "JFIF", "IFD0", "Adobe", "PNG", "RIFF", "QuickTime", "Meta", "Composite"}
_ICC_PREFIX = "ICC"
# Within the structural groups, names that carry identifying content.
_IDENTIFYING_WORDS = ("GPS", "Date", "Serial", "Make", "Model", "Thumbnail", "Preview", "Comment", "Artist",
                      "Copyright", "Author", "Creator", "Owner", "Software", "City", "Location", "IPTC",
                      "Warning", "Description", "Title", "Keyword", "Lens")
_ALLOWED_IFD0 = {"Orientation"}
_ALLOWED_COMPOSITE = {"ImageSize", "Megapixels"}


def identifying_tags(tags: dict[str, object]) -> list[str]:
    """The keys of ``tags`` (exiftool ``-G1`` output) that should not be there."""
    bad = []
    for key in tags:
        group, _, name = key.partition(":")
        if group.startswith(_ICC_PREFIX):
            continue  # the colour profile is kept on purpose
        if group not in _STRUCTURAL_GROUPS:
            bad.append(key)
        elif group == "IFD0" and name not in _ALLOWED_IFD0:
            bad.append(key)
        elif group == "Composite" and name not in _ALLOWED_COMPOSITE:
            bad.append(key)
        elif any(word in name for word in _IDENTIFYING_WORDS):
            bad.append(key)
    return bad


def planted_markers(data: bytes) -> list[bytes]:
    """Planted marker strings still present anywhere in ``data``."""
    return [marker for marker in MARKER_BYTES if marker in data]


def identifying_video_tags(tags: dict[str, object]) -> dict[str, str]:
    from tests.pipeline.videos import MARKERS  # the planted video markers

    """Tags that tell who, where or when, by category ('Group:Name' -> category)."""
    found = {}
    for key, value in tags.items():
        name, text = key.split(":", 1)[1], str(value)
        if "GPS" in name or "Location" in name or "48 deg" in text or "+48.8584" in text:
            found[key] = "location"
        elif name in ("Make", "Model") or MARKERS["make"] in text or MARKERS["model"] in text:
            found[key] = "device"
        elif ("Date" in name or name == "CreationTime") and text != "0000:00:00 00:00:00":
            found[key] = "date"
        elif name in ("Software", "SoftwareVersion", "Encoder", "Title") or any(m in text for m in MARKERS.values()):
            found[key] = "handler" if name == "HandlerDescription" else "software"
    return found
