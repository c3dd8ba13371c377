"""HEIC/HEIF: neutralise metadata at box level, in place, so every offset stays valid.

HEIF keeps the primary image's coded data in ``mdat`` (or ``idat``) and finds it through
``iloc`` offsets; rewriting the file would mean recomputing them all, and re-encoding with
pillow-heif is lossy and slow. Instead the file is copied and the payloads that must go
are overwritten with same-length bytes:

* ``Exif`` items: a minimal EXIF holding only the original Orientation, zero padded.
* XMP (``mime`` items of type ``application/rdf+xml``): an empty, well-formed XMP packet.
* thumbnails (``thmb`` references, and the tiles of a grid thumbnail), every other image
  item the primary does not need, other ``mime``/``uri`` items and unknown item types:
  zeros. The primary and what it is built from (grid tiles, ``iden``/``iovl`` sources, its
  auxiliary images such as alpha, depth and gain maps, a tone-map derived from it) stay.
* unknown boxes at top level or in ``meta``, and unknown item properties (``udes`` user
  description, ``altt`` alternative text, ...): renamed ``free`` and zeroed.
* every other byte of ``mdat``/``idat`` that no kept item reads (free space, leftovers of
  edits, data of items no index lists): zeros.

Refused: item protection (encryption), external data references, neutralised items whose
bytes are shared with the primary's or live outside ``mdat``/``idat``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vault.pipeline.isobmff import Box, Cursor, boxes
from vault.pipeline.sanitize.base import Sanitized, Sanitizer, corrupt
from vault.pipeline.sanitize.orientation import resolve_orientation
from vault.pipeline.sniff import HEIC, HEIF, SNIFF_BYTES, sniff
from vault.pipeline.tiff import empty_xmp, orientation_exif, strip_exif_prefix

_TOP_KEEP = frozenset({b"ftyp", b"meta", b"mdat", b"free", b"skip"})
_META_KEEP = frozenset({b"hdlr", b"pitm", b"iloc", b"iinf", b"iref", b"iprp", b"idat", b"dinf", b"grpl",
                        b"free", b"skip"})
# Properties that describe how to decode and display pixels; anything else is neutralised.
_PROPERTY_KEEP = frozenset(
    {b"hvcC", b"av1C", b"vvcC", b"jpgC", b"j2kH", b"uncC", b"cmpd", b"ispe", b"pixi", b"colr",
     b"irot", b"imir", b"clap", b"pasp", b"rloc", b"lsel", b"auxC", b"a1op", b"a1lx", b"clli",
     b"mdcv", b"cclv", b"amve", b"iscl", b"free", b"skip"}
)
_IMAGE_TYPES = frozenset({b"hvc1", b"hev1", b"av01", b"vvc1", b"jpeg", b"j2k1", b"unci", b"grid", b"iden",
                          b"iovl", b"tmap", b"hvt1", b"mski"})
_XMP_TYPES = frozenset({b"application/rdf+xml", b"application/xmp+xml"})


@dataclass(slots=True)
class _Item:
    type: bytes
    content_type: bytes = b""
    content_encoding: bytes = b""
    # Absolute file ranges; None when built from other items (iloc construction method 2).
    extents: list[tuple[int, int]] | None = field(default_factory=list)


@dataclass(slots=True)
class _Meta:
    primary: int = 0
    items: dict[int, _Item] = field(default_factory=dict)
    refs: list[tuple[bytes, int, list[int]]] = field(default_factory=list)
    properties: list[Box] = field(default_factory=list)
    associations: dict[int, list[tuple[int, bool]]] = field(default_factory=dict)
    containers: list[tuple[int, int]] = field(default_factory=list)  # mdat/idat payload ranges
    neutralise: list[Box] = field(default_factory=list)


class HeicSanitizer(Sanitizer):
    mimetypes = frozenset({HEIC, HEIF})

    def sanitize(self, data: bytes) -> Sanitized:
        top = list(boxes(data, 0, len(data)))
        if not top or top[0].type != b"ftyp":
            raise corrupt("no ftyp box first")
        metas = [box for box in top if box.type == b"meta"]
        if len(metas) != 1:
            raise corrupt("expected exactly one meta box")
        meta = _Meta()
        meta.containers = [(box.body, box.end) for box in top if box.type == b"mdat"]
        meta.neutralise = [box for box in top if box.type not in _TOP_KEEP]
        _parse_meta(data, metas[0], meta)
        if meta.primary not in meta.items:
            raise corrupt("primary item missing")
        width, height = _primary_size(data, meta)

        keep = _needed_by_primary(meta)
        if any(meta.items[item_id].extents is None for item_id in keep):
            raise corrupt("the primary image is built from item offsets")
        protected = sorted(extent for item_id in keep for extent in meta.items[item_id].extents or [])
        exif_items = [(item_id, item) for item_id, item in meta.items.items()
                      if item.type == b"Exif" and item_id not in keep]
        # The Exif block that describes the primary decides the orientation we keep.
        chosen = next((item for item_id, item in exif_items if _describes(meta, item_id, keep)),
                      exif_items[0][1] if exif_items else None)
        exif = _exif_from_payload(_payload(data, chosen)) if chosen is not None else None
        orientation = resolve_orientation(exif=exif, xmp=None)

        out = bytearray(data)
        _zero_unused(out, meta.containers, protected)
        for item_id, item in meta.items.items():
            if item_id not in keep:
                _overwrite(out, item, _replacement(item, orientation), protected, meta.containers)
        for box in meta.neutralise:
            _neutralise_box(out, box, protected)
        mime = sniff(data[:SNIFF_BYTES])
        return Sanitized(mime=mime if mime in self.mimetypes else HEIF, data=bytes(out), width=width, height=height,
                         orientation=orientation, original_exif=exif)


def _parse_meta(data: bytes, meta_box: Box, meta: _Meta) -> None:
    children = list(boxes(data, meta_box.body + 4, meta_box.end))
    by_type: dict[bytes, Box] = {}
    for box in children:
        if box.type == b"ipro":
            raise corrupt("protected items are not supported")
        if box.type not in _META_KEEP:
            meta.neutralise.append(box)
        elif box.type in by_type and box.type not in (b"free", b"skip"):
            raise corrupt("duplicate box in meta")
        by_type[box.type] = box
    for needed in (b"pitm", b"iinf", b"iloc"):
        if needed not in by_type:
            raise corrupt("meta lacks pitm, iinf or iloc")
    idat = by_type.get(b"idat")
    if idat is not None:
        meta.containers.append((idat.body, idat.end))

    cursor = Cursor(data, by_type[b"pitm"].body, by_type[b"pitm"].end)
    version, _ = cursor.full_box()
    meta.primary = cursor.uint(2 if version == 0 else 4)
    _parse_iinf(data, by_type[b"iinf"], meta)
    _parse_iloc(data, by_type[b"iloc"], meta, idat)
    if b"iref" in by_type:
        _parse_iref(data, by_type[b"iref"], meta)
    if b"iprp" in by_type:
        _parse_iprp(data, by_type[b"iprp"], meta)


def _parse_iinf(data: bytes, box: Box, meta: _Meta) -> None:
    cursor = Cursor(data, box.body, box.end)
    version, _ = cursor.full_box()
    cursor.uint(2 if version == 0 else 4)
    for entry in boxes(data, cursor.pos, box.end):
        if entry.type != b"infe":
            continue
        c = Cursor(data, entry.body, entry.end)
        version, _ = c.full_box()
        if version < 2:
            raise corrupt("legacy item info entry")
        item_id = c.uint(2 if version == 2 else 4)
        if c.uint(2) != 0:
            raise corrupt("protected items are not supported")
        item = _Item(type=c.take(4))
        c.cstring()  # item name
        if item.type == b"mime":
            item.content_type = c.cstring().lower()
            item.content_encoding = c.cstring() if c.left else b""
        meta.items[item_id] = item


def _parse_iloc(data: bytes, box: Box, meta: _Meta, idat: Box | None) -> None:
    c = Cursor(data, box.body, box.end)
    version, _ = c.full_box()
    if version > 2:
        raise corrupt("unknown iloc version")
    sizes = c.uint(1)
    offset_size, length_size = sizes >> 4, sizes & 15
    sizes = c.uint(1)
    base_offset_size, index_size = sizes >> 4, (sizes & 15) if version else 0
    if any(n not in (0, 4, 8) for n in (offset_size, length_size, base_offset_size, index_size)):
        raise corrupt("bad iloc field size")
    for _ in range(c.uint(2 if version < 2 else 4)):
        item_id = c.uint(2 if version < 2 else 4)
        method = c.uint(2) & 15 if version else 0
        if c.uint(2) != 0:
            raise corrupt("external data references are not supported")
        base = c.uint(base_offset_size)
        extents: list[tuple[int, int]] | None = []
        for _ in range(c.uint(2)):
            c.uint(index_size)
            offset, length = c.uint(offset_size), c.uint(length_size)
            if method == 0:
                start, limit = base + offset, len(data)
            elif method == 1 and idat is not None:
                start, limit = idat.body + base + offset, idat.end
            else:
                extents = None  # item-offset construction: never ours to rewrite
                continue
            stop = limit if length == 0 else start + length
            if stop > limit:
                raise corrupt("item data runs past the end")
            if extents is not None:
                extents.append((start, stop))
        item = meta.items.get(item_id)
        if item is not None:
            item.extents = extents


def _parse_iref(data: bytes, box: Box, meta: _Meta) -> None:
    c = Cursor(data, box.body, box.end)
    version, _ = c.full_box()
    width = 2 if version == 0 else 4
    for ref in boxes(data, c.pos, box.end):
        r = Cursor(data, ref.body, ref.end)
        source = r.uint(width)
        targets = [r.uint(width) for _ in range(r.uint(2))]
        meta.refs.append((ref.type, source, targets))


def _parse_iprp(data: bytes, box: Box, meta: _Meta) -> None:
    for child in boxes(data, box.body, box.end):
        if child.type == b"ipco":
            meta.properties = list(boxes(data, child.body, child.end))
        elif child.type == b"ipma":
            c = Cursor(data, child.body, child.end)
            version, flags = c.full_box()
            for _ in range(c.uint(4)):
                item_id = c.uint(2 if version < 1 else 4)
                entries = []
                for _ in range(c.uint(1)):
                    value = c.uint(2 if flags & 1 else 1)
                    high = 0x8000 if flags & 1 else 0x80
                    entries.append((value & (high - 1), bool(value & high)))
                meta.associations.setdefault(item_id, []).extend(entries)
    essential = {index for entries in meta.associations.values() for index, must in entries if must}
    for index, prop in enumerate(meta.properties, start=1):
        if prop.type not in _PROPERTY_KEEP:
            if index in essential:
                raise corrupt("an essential item property is not understood")
            meta.neutralise.append(prop)


def _primary_size(data: bytes, meta: _Meta) -> tuple[int, int]:
    for index, _ in meta.associations.get(meta.primary, []):
        if 1 <= index <= len(meta.properties) and meta.properties[index - 1].type == b"ispe":
            c = Cursor(data, meta.properties[index - 1].body, meta.properties[index - 1].end)
            c.full_box()
            width, height = c.uint(4), c.uint(4)
            if width and height:
                return width, height
    raise corrupt("primary image has no size")


def _closure(start: Iterable[int], meta: _Meta) -> set[int]:
    """The items and every item they are derived from (``dimg`` sources)."""
    found = set(start)
    pending = list(found)
    while pending:
        current = pending.pop()
        for kind, source, targets in meta.refs:
            if kind == b"dimg" and source == current:
                for target in targets:
                    if target not in found:
                        found.add(target)
                        pending.append(target)
    return found


def _needed_by_primary(meta: _Meta) -> set[int]:
    thumbnails = {source for kind, source, _ in meta.refs if kind == b"thmb"}
    keep = _closure([meta.primary], meta)
    while True:
        grown = set(keep)
        for kind, source, targets in meta.refs:
            if source in grown or source in thumbnails or not any(t in keep for t in targets):
                continue
            # Alpha/depth/gain maps of what we keep, and derivations of it (a tone map).
            if kind == b"auxl" or (kind == b"dimg" and meta.items.get(source, _Item(b"")).type in _IMAGE_TYPES):
                grown |= _closure([source], meta)
        if grown == keep:
            return keep
        keep = grown


def _describes(meta: _Meta, item_id: int, keep: set[int]) -> bool:
    return any(kind == b"cdsc" and source == item_id and any(t in keep for t in targets)
               for kind, source, targets in meta.refs)


def _replacement(item: _Item, orientation: int) -> bytes:
    """What to write over an item the primary does not need; it is zero padded."""
    if item.type == b"Exif":
        return _exif_payload(orientation, _length(item))
    if item.type == b"mime" and item.content_type in _XMP_TYPES and not item.content_encoding:
        return empty_xmp(_length(item))
    return b""


def _length(item: _Item) -> int:
    return sum(stop - start for start, stop in item.extents or [])


def _payload(data: bytes, item: _Item) -> bytes:
    return b"".join(data[start:stop] for start, stop in item.extents or [])


def _exif_from_payload(payload: bytes) -> bytes | None:
    # HEIF Exif items start with a 32-bit offset from there to the TIFF header.
    if len(payload) < 4:
        return None
    skip = 4 + int.from_bytes(payload[:4], "big")
    return strip_exif_prefix(payload[skip:]) if skip < len(payload) else None


def _exif_payload(orientation: int, length: int) -> bytes:
    payload = b"\x00\x00\x00\x00" + orientation_exif(orientation)
    return payload if len(payload) <= length else b""


def _overwrite(out: bytearray, item: _Item, replacement: bytes, protected: list[tuple[int, int]],
               containers: list[tuple[int, int]]) -> None:
    if item.extents is None:
        raise corrupt("cannot locate an item that must be removed")
    filled = replacement.ljust(_length(item), b"\x00")
    written = 0
    for start, stop in item.extents:
        if any(start < p_stop and p_start < stop for p_start, p_stop in protected):
            raise corrupt("metadata shares bytes with the image")
        if not any(c_start <= start and stop <= c_stop for c_start, c_stop in containers):
            raise corrupt("item data outside mdat/idat")
        out[start:stop] = filled[written:written + stop - start]
        written += stop - start


def _zero_unused(out: bytearray, containers: list[tuple[int, int]], protected: list[tuple[int, int]]) -> None:
    """Zero every byte of mdat/idat that no kept item reads: free space, leftovers of edits
    and data of items no index lists are not ours to keep either."""
    for c_start, c_stop in containers:
        pos = c_start
        for p_start, p_stop in protected:
            if p_stop <= pos or p_start >= c_stop:
                continue
            if p_start > pos:
                out[pos:p_start] = bytes(p_start - pos)
            pos = max(pos, p_stop)
        if pos < c_stop:
            out[pos:c_stop] = bytes(c_stop - pos)


def _neutralise_box(out: bytearray, box: Box, protected: list[tuple[int, int]]) -> None:
    if any(box.start < p_stop and p_start < box.end for p_start, p_stop in protected):
        raise corrupt("image data inside an unknown box")
    out[box.start + 4:box.start + 8] = b"free"
    out[box.start + box.fixed:box.end] = bytes(box.end - box.start - box.fixed)
