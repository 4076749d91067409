"""The HTTP surface of blob storage, under ``/api/v1/integration/storage`` (docs/storage.md).

Uploads, three ways, all answered 201 with the stored :class:`ObjectInfo`:

- ``POST /upload`` with ``application/json`` ``{file_name, content,
  content_encoding?, content_type?, metadata?, key?}`` (the seed's form); the
  body is capped by the integration class body limit (1 MiB by default);
- ``POST /upload`` with ``multipart/form-data``: optional fields ``key``,
  ``content_type``, ``metadata`` (a JSON object), then the file part, last;
  parsed as it streams, never buffered whole;
- ``PUT /{key}`` with the object as the raw body, ``Content-Type`` stored as
  given, ``X-Meta-<name>`` headers as metadata.

The streamed forms are capped by ``storage.max_object_bytes`` while they
arrive (413, nothing stored), not by the generic body limit.

Downloads are served as attachments: whatever content type the uploader
declared is echoed, never sniffed and never trusted; ``Content-Disposition:
attachment`` and ``X-Content-Type-Options: nosniff`` (set on every response by
``security.py``) keep a browser from rendering an uploaded HTML page in the
gateway's origin. Objects are per tenant: a key names an object of the
caller's tenant only.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec
from msgspec import Meta
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from agentcore.config import StorageConfig
from agentcore.errors import (
    InvalidKey,
    InvalidParams,
    InvalidRequest,
    StorageUnavailable,
    UnsupportedMediaType,
)
from agentcore.http import Request, Response, StreamingResponse, json_response
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.routing import Doc, Router
from agentcore.storage.base import (
    BlobStore,
    ObjectInfo,
    Page,
    byte_range,
    check_key,
    check_metadata,
)

PREFIX = "/api/v1/integration/storage"
DEFAULT_TYPE = "application/octet-stream"
#: Bytes of multipart framing and form fields allowed on top of the object.
FORM_OVERHEAD_BYTES = 64 * 1024
#: A media type as a header value can carry it: printable ASCII, no CR/LF.
_MEDIA_TYPE_PATTERN = r"^[A-Za-z0-9.+_-]+/[A-Za-z0-9.+_-]+( *;[\x20-\x7e]*)?$"
_MEDIA_TYPE = re.compile(_MEDIA_TYPE_PATTERN)
_SCALAR = str | int | float | bool
#: One key segment for the published schema: not empty, not "." or "..", no
#: control character, backslash or slash (what ``check_key`` enforces).
_SEG = (
    r"(?:[^/\x00-\x1f\x7f\\]{3,}|[^./\x00-\x1f\x7f\\][^/\x00-\x1f\x7f\\]?|\.[^./\x00-\x1f\x7f\\])"
)

Key = Annotated[str, Meta(min_length=1, max_length=512, pattern=f"^{_SEG}(?:/{_SEG})*$")]
ContentType = Annotated[str, Meta(max_length=255, pattern=_MEDIA_TYPE_PATTERN)]
MetaKey = Annotated[str, Meta(min_length=1, max_length=64)]
MetaValue = Annotated[str, Meta(max_length=256)] | int | float | bool


class JsonUpload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Becomes the key unless ``key`` is given.
    file_name: Key
    content: str
    #: ``text``: stored as its UTF-8 bytes; ``base64``: decoded (standard alphabet).
    content_encoding: Literal["text", "base64"] = "text"
    #: Stored and echoed as given; never sniffed. Default ``application/octet-stream``.
    content_type: ContentType | None = None
    #: Scalars are stored as strings (``true``, ``3``); at most 1 KiB as JSON.
    metadata: Annotated[dict[MetaKey, MetaValue], Meta(max_length=16)] = {}
    key: Key | None = None


class ListQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prefix: Annotated[str, Meta(max_length=512, pattern=r"^[^\x00-\x1f\x7f\\]*$")] = ""
    #: The ``next_after`` of the previous page.
    after: Annotated[str, Meta(max_length=512)] | None = None
    #: Capped at ``storage.max_page_size``.
    limit: Annotated[int, Meta(ge=1)] = 100


def add_routes(
    router: Router, blobs: BlobStore, config: StorageConfig, max_json_bytes: int
) -> None:
    max_bytes = config.max_object_bytes

    async def upload(request: Request) -> Response:
        tenant = _tenant(request)
        media, options = parse_options_header(request.header(b"content-type"))
        if media == b"application/json":
            body = await request.json(JsonUpload, max_json_bytes)
            content = _decode_content(body)
            key = _upload_key(body.key or body.file_name)

            async def one() -> AsyncIterator[bytes]:
                yield content

            info = await blobs.put(
                tenant,
                key,
                one(),
                _media_type(body.content_type),
                check_metadata({k: _text(v) for k, v in body.metadata.items()}),
                max_bytes,
            )
        elif media == b"multipart/form-data" and options.get(b"boundary"):
            form = _Form(options[b"boundary"], request.stream(max_bytes + FORM_OVERHEAD_BYTES))
            await form.start()
            key = _upload_key(form.fields.get("key") or form.filename)
            info = await blobs.put(
                tenant,
                key,
                form.file_chunks(),
                _media_type(form.fields.get("content_type") or form.file_type),
                form.metadata(),
                max_bytes,
            )
        else:
            raise UnsupportedMediaType(
                "upload with application/json or multipart/form-data, "
                f"or PUT the raw bytes to {PREFIX}/{{key}}"
            )
        return _created(info)

    async def put(request: Request) -> Response:
        tenant = _tenant(request)
        key = _upload_key(request.path_params["key"])
        declared = request.header(b"content-type")
        metadata = {
            name[len(b"x-meta-") :].decode("latin-1"): value.decode("latin-1")
            for name, value in request.scope["headers"]
            if name.startswith(b"x-meta-") and len(name) > len(b"x-meta-")
        }
        info = await blobs.put(
            tenant,
            key,
            request.stream(max_bytes),
            _media_type(declared.decode("latin-1") if declared else None),
            check_metadata(metadata),
            max_bytes,
        )
        return _created(info)

    async def download(request: Request) -> Response:
        tenant = _tenant(request)
        key = check_key(request.path_params["key"])
        spec = request.header(b"range")
        if spec is None:
            info, chunks = await blobs.open(tenant, key)
            return _download(info, chunks, None)
        text = spec.decode("latin-1")
        for _ in range(3):  # the object may be replaced between stat and open
            expected = await blobs.stat(tenant, key)
            span = byte_range(text, expected.size)
            start, end = span or (0, expected.size)
            info, chunks = await blobs.open(tenant, key, start, end)
            if info.sha256 == expected.sha256 and info.size == expected.size:
                return _download(info, chunks, span)
            await chunks.aclose()  # type: ignore[attr-defined]
        raise StorageUnavailable("the object kept changing while it was being read; retry")

    async def metadata(request: Request) -> Response:
        tenant = _tenant(request)
        return json_response(await blobs.stat(tenant, check_key(request.path_params["key"])))

    async def delete(request: Request) -> Response:
        tenant = _tenant(request)
        await blobs.delete(tenant, check_key(request.path_params["key"]))
        return Response(204)

    async def listing(request: Request) -> Response:
        tenant = _tenant(request)
        query = request.query(ListQuery)
        page = await blobs.list(
            tenant, query.prefix, query.after, min(query.limit, config.max_page_size)
        )
        return json_response(page)

    errors = {401: "missing or invalid credentials", 403: "missing storage scope"}
    missing = {**errors, 404: "no such object"}
    tags = ("storage",)
    router.add(
        "POST",
        f"{PREFIX}/upload",
        upload,
        Doc(
            "Upload an object (JSON or multipart/form-data); durable when answered",
            body=JsonUpload,
            response=ObjectInfo,
            status=201,
            tags=tags,
            errors={
                **errors,
                413: "object above storage.max_object_bytes (JSON: above the body limit)",
                415: "neither JSON nor multipart/form-data",
            },
        ),
    )
    router.add(
        "GET",
        PREFIX,
        listing,
        Doc("List objects by prefix", query=ListQuery, response=Page, tags=tags, errors=errors),
    )
    # Before "{key:path}": ".../a/metadata" is the metadata of "a" (such keys are refused).
    router.add(
        "GET",
        f"{PREFIX}/{{key:path}}/metadata",
        metadata,
        Doc("An object's metadata", response=ObjectInfo, tags=tags, errors=missing),
    )
    router.add(
        "GET",
        f"{PREFIX}/{{key:path}}",
        download,
        Doc(
            "Download an object (as an attachment; Range supported)",
            tags=tags,
            errors={**missing, 416: "range outside the object"},
        ),
    )
    router.add(
        "PUT",
        f"{PREFIX}/{{key:path}}",
        put,
        Doc(
            "Upload an object as the raw body; durable when answered",
            response=ObjectInfo,
            status=201,
            tags=tags,
            errors={**errors, 413: "object above storage.max_object_bytes"},
        ),
    )
    router.add(
        "DELETE",
        f"{PREFIX}/{{key:path}}",
        delete,
        Doc("Delete an object", status=204, tags=tags, errors=missing),
    )


def _tenant(request: Request) -> str:
    identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
    identity.require("storage")
    return identity.tenant


def _upload_key(key: str) -> str:
    check_key(key)
    if key.endswith("/metadata"):
        raise InvalidKey("keys ending in '/metadata' are reserved (GET .../{key}/metadata)")
    return key


def _media_type(declared: str | None) -> str:
    if not declared:
        return DEFAULT_TYPE
    if len(declared) > 255 or not _MEDIA_TYPE.match(declared):
        raise InvalidParams(
            f"invalid content type {declared[:64]!r}", data={"field": "content_type"}
        )
    return declared


def _text(value: str | int | float | bool) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def _decode_content(body: JsonUpload) -> bytes:
    if body.content_encoding == "text":
        return body.content.encode()
    try:
        return base64.b64decode(body.content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidParams("content is not valid base64", data={"field": "content"}) from exc


def _created(info: ObjectInfo) -> Response:
    response = json_response(info, 201)
    response.headers = [(b"location", f"{PREFIX}/{quote(info.key)}".encode())]
    return response


def _download(
    info: ObjectInfo, chunks: AsyncIterator[bytes], span: tuple[int, int] | None
) -> Response:
    name = info.key.rpartition("/")[2]
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
    headers = [
        (b"content-disposition", disposition.encode()),
        (b"etag", f'"{info.sha256}"'.encode()),
        (b"accept-ranges", b"bytes"),
        (b"cache-control", b"private, no-cache"),
    ]
    status, length = 200, info.size
    if span is not None:
        start, end = span
        status, length = 206, end - start
        headers.append((b"content-range", f"bytes {start}-{end - 1}/{info.size}".encode()))
    return StreamingResponse(status, chunks, info.content_type.encode(), headers, length)


class _Form:
    """A multipart/form-data body parsed as it streams: small fields first, then one file.

    The parser's callbacks only record what they see; :meth:`file_chunks`
    feeds it and yields the file's bytes as they come. A second file, or any
    part after the file, is refused (400) so the object is known to be whole
    only when the body is.
    """

    #: Bytes of all non-file fields together.
    MAX_FIELDS_BYTES = 16 * 1024

    def __init__(self, boundary: bytes, body: AsyncIterator[bytes]) -> None:
        self.body = body
        self.fields: dict[str, str] = {}
        self.filename = ""
        self.file_type: str | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field: bytes = b""
        self._value: list[bytes] = []
        self._fields_bytes = 0
        self._state: Literal["before", "file", "after"] = "before"
        self._in_file = False
        self._out: list[bytes] = []
        self._ended = False
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )
        self._name = b""
        self._header_value_parts: list[bytes] = []

    async def start(self) -> None:
        """Read up to the start of the file part (fields before it are then in ``fields``)."""
        while self._state == "before":
            if not await self._feed():
                raise InvalidParams("multipart upload without a file part", data={"field": "file"})

    async def file_chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._out:
                data = b"".join(self._out)
                self._out.clear()
                yield data
            if self._state == "after":
                break
            if not await self._feed():
                raise InvalidRequest("the multipart body ended inside the file part")
        while not self._ended:  # the closing boundary must arrive too
            if not await self._feed():
                raise InvalidRequest("the multipart body ended without its closing boundary")

    def metadata(self) -> dict[str, str]:
        raw = self.fields.get("metadata")
        if not raw:
            return {}
        try:
            decoded = msgspec.json.decode(raw, type=dict[str, _SCALAR])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidParams(
                "metadata must be a JSON object of strings, numbers or booleans",
                data={"field": "metadata"},
            ) from exc
        return check_metadata({k: _text(v) for k, v in decoded.items()})

    async def _feed(self) -> bool:
        chunk = await anext(self.body, None)
        if chunk is None:
            return False
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        return True

    # -- parser callbacks -----------------------------------------------------

    def _part_begin(self) -> None:
        if self._state != "before":
            raise InvalidRequest("the file must be the last part of the multipart body")
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value_parts.append(data[start:end])

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = b"".join(self._header_value_parts)
        self._name, self._header_value_parts = b"", []

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition"))
        filename = params.get(b"filename")
        self._field = params.get(b"name", b"")
        self._value = []
        if filename is not None:
            self._state = "file"
            self._in_file = True
            self.filename = filename.decode("utf-8", "replace")
            declared = self._headers.get(b"content-type")
            self.file_type = declared.decode("latin-1") if declared else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._out.append(data[start:end])
            return
        self._fields_bytes += end - start
        if self._fields_bytes > self.MAX_FIELDS_BYTES:
            raise InvalidRequest(f"form fields above {self.MAX_FIELDS_BYTES} bytes")
        self._value.append(data[start:end])

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._state = "after"
        else:
            self.fields[self._field.decode("utf-8", "replace")] = b"".join(self._value).decode(
                "utf-8", "replace"
            )

    def _end(self) -> None:
        self._ended = True
