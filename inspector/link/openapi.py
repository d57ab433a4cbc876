"""The OpenAPI 3.0 description of the agent's API (served at ``/api/v1/openapi.json``), built from
:mod:`inspector.link.protocol`: its endpoint table (:data:`~inspector.link.protocol.ENDPOINTS`,
``ERRORS``, ``ACCEPTED``, ``OPEN_ENDPOINTS``) and message dataclasses, with the JSON Schema of
each message. A view of the protocol, not a second definition: nothing here adds an endpoint or
a field. A generated client and a fuzzer (schemathesis) read the document this module makes.
"""
from __future__ import annotations

import enum
import re
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Literal

from inspector.link import protocol as P
from inspector.link.protocol import (ACCEPTED, API, COMMON_ERRORS, ENDPOINTS, ERRORS, MAX_PACKAGE_BYTES,
                                     MAX_STREAM_FRAMES, METHODS, OPEN_ENDPOINTS, PACKAGE_CONTENT_TYPE,
                                     STREAM_CONTENT_TYPE, STREAM_MAGIC)

_REF = "#/components/schemas/"
_TYPES: dict[Any, dict[str, str]] = {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
                                     bool: {"type": "boolean"}}
_ERROR_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["error"],
                 "properties": {"error": {"type": "object", "additionalProperties": False,
                                          "required": ["code", "message"],
                                          "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}


def json_schema(tp: Any, components: dict[str, dict]) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.0 dialect) of a message field's type: str/int/float/bool, Any,
    ``X | None``, unions, ``list[X]``, ``dict[str, X]``, Literal, Enum, and dataclasses, which
    become a ``$ref`` with their schema added to ``components`` (nested ones too)."""
    if is_dataclass(tp):
        if tp.__name__ not in components:
            components[tp.__name__] = {}          # placeholder: a dataclass that refers to itself
            components[tp.__name__] = _dataclass_schema(tp, components)
        return {"$ref": _REF + tp.__name__}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = (json_schema(rest[0], components) if len(rest) == 1
                 else {"oneOf": [json_schema(a, components) for a in rest]})
        return inner if len(rest) == len(args) else _nullable(inner)
    if origin is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        values = list(args) if origin is Literal else [m.value for m in tp]
        return {**_TYPES.get(type(values[0]), {}), "enum": values}
    if tp is list or origin is list:
        return {"type": "array", "items": json_schema(args[0], components) if args else {}}
    if tp is dict or origin is dict:
        return {"type": "object", **({"additionalProperties": json_schema(args[1], components)} if args else {})}
    if tp is Any:
        return {}
    if tp in _TYPES:
        return dict(_TYPES[tp])
    raise TypeError(f"no JSON Schema for {tp!r}")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:  # OpenAPI 3.0 ignores keywords next to a $ref
        return {"allOf": [schema], "nullable": True}
    if "enum" in schema:
        schema = {**schema, "enum": [*schema["enum"], None]}
    return {**schema, "nullable": True}


def _reshape(tp: Any, shape: type) -> Any:
    """``dict`` in ``tp`` (also inside list[...] and X | None) replaced by the dataclass ``shape``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is dict or origin is dict:
        return shape
    if origin is list:
        return list[_reshape(args[0], shape)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_reshape(a, shape) for a in args)]
    return tp


def _dataclass_schema(cls: type, components: dict[str, dict]) -> dict[str, Any]:
    """A closed object: the protocol's messages refuse unknown fields (:meth:`~inspector.link.protocol.Message.from_dict`)."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in fields(cls):
        shape = f.metadata.get("shape")
        schema = json_schema(_reshape(hints[f.name], shape) if shape else hints[f.name], components)
        extra = f.metadata.get("schema")
        if extra:
            schema = {"allOf": [schema], **extra} if "$ref" in schema else {**schema, **extra}
        props[f.name] = schema
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props,
                           "required": [f.name for f in fields(cls)
                                        if f.default is MISSING and f.default_factory is MISSING]}
    doc = cls.__doc__ or ""
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the one @dataclass makes up
        out["description"] = doc.strip().split("\n\n")[0]
    return out


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"description": description, "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}}}
    return {**out, "headers": headers} if headers else out


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
_MAX_FRAMES = {"name": "max_frames", "in": "query", "required": False,
               "description": "end the stream after this many frames (without: until the client closes it; "
                              "a generic client or a fuzzer should always set it)",
               "schema": {"type": "integer", "minimum": 1, "maximum": MAX_STREAM_FRAMES}}
_STREAM_DOC = (f"Long-lived: frames until the client closes the connection (or max_frames of them); no "
               f"Content-Length, the connection closes at the end. Each frame: 4 bytes {STREAM_MAGIC.decode()!r}, "
               f"three u32 big-endian lengths (header, JPEG, heat-map), the StreamHeader JSON, the JPEG of the "
               f"camera frame, the heat-map (uint8, ceil(height/heat_scale) x ceil(width/heat_scale), value v "
               f"means v/255). A slow client gets the newest frame, not a backlog.")


def _responses(key: tuple[str, str], response: str) -> dict[str, Any]:
    if response == "stream":
        ok = {"description": _STREAM_DOC, "content": {STREAM_CONTENT_TYPE: {"schema": {"type": "string",
                                                                                      "format": "binary"}}}}
    elif response == "openapi":
        ok = {"description": "this document", "content": {"application/json": {"schema": {"type": "object"}}}}
    else:
        ok = {"description": "ok", "content": {"application/json": {"schema": {"$ref": _REF + response}}}}
    out: dict[str, Any] = {"200": ok}
    if key in ACCEPTED:
        out["202"] = {"description": "accepted, in progress", "content": {"application/json": {
            "schema": {"$ref": _REF + ACCEPTED[key]}}}}
    errors = {**COMMON_ERRORS, **ERRORS.get(key, {})}
    if key not in OPEN_ENDPOINTS:
        errors[401] = "missing or wrong bearer token"
    for status in sorted(errors):
        headers = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}} if status == 401 else \
            _RETRY_AFTER if status in (429, 503) else None
        out[str(status)] = _error(errors[status], headers)
    return out


def _operation(key: tuple[str, str], components: dict[str, dict]) -> dict[str, Any]:
    summary, body, response = ENDPOINTS[key]
    op: dict[str, Any] = {"summary": summary, "operationId": _operation_id(key)}
    if key not in OPEN_ENDPOINTS:
        op["security"] = [{"bearer": []}]
    if response == "stream":
        op["parameters"] = [_MAX_FRAMES]
    if body == "package":
        op["requestBody"] = {"required": True, "description": (
            f"the .crackpkg file, at most {MAX_PACKAGE_BYTES} bytes (413 beyond); the agent verifies it from "
            f"its bytes whatever the Content-Type says"),
            "content": {PACKAGE_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
    elif body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": json_schema(getattr(P, body), components)}}}
    for kind in (response, ACCEPTED.get(key)):
        if kind is not None and is_dataclass(getattr(P, kind, None)):
            json_schema(getattr(P, kind), components)
    op["responses"] = _responses(key, response)
    return op


def _operation_id(key: tuple[str, str]) -> str:
    method, path = key
    words = re.findall(r"[a-z0-9]+", path.removeprefix(API).lower())
    return method.lower() + "".join(w.capitalize() for w in words)


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 description of the agent's API (served at ``/api/v1/openapi.json``),
    built from :data:`ENDPOINTS`, :data:`ERRORS` and the message dataclasses."""
    components: dict[str, dict] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, dict] = {}
    for key in ENDPOINTS:
        paths.setdefault(key[1], {})[key[0].lower()] = _operation(key, components)
    doc = ("The crack inspector's device agent. Errors: the Error body with the statuses listed per operation. "
           f"Methods other than {', '.join(sorted(METHODS))} are 501 on every path, before authentication "
           "(RFC 9110 15.6.2); one of those on a path without it is 405 with Allow (after authentication).")
    return {"openapi": "3.0.3",
            "info": {"title": "Crack inspector device agent", "version": "1", "description": doc},
            "paths": paths,
            "components": {"schemas": dict(sorted(components.items())),
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
