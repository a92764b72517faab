"""``/api/v1/docs``: the API reference as one plain HTML page, rendered from the OpenAPI document.

Swagger UI and Redoc are JavaScript applications that style themselves inline, which the site-wide
Content-Security-Policy forbids (no inline style, nothing from a CDN), so the reference is rendered here with Jinja:
every operation by tag (method, path, summary, parameters, request body, answers) and every schema with its fields.
No script is needed; the page is public, like the document it is made from, and holds no tenant data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Flask, render_template
from flask.typing import ResponseReturnValue
from flask_smorest import Api

from app.access import allow_public

#: Where the page is served, under the API's prefix.
DOCS_PATH = "docs"
#: HTTP methods in the order the page lists them within one path.
METHODS = ("get", "post", "put", "patch", "delete")


@dataclass
class Field:
    name: str
    type: str
    ref: str | None
    required: bool
    description: str
    constraints: str


@dataclass
class Operation:
    method: str
    path: str
    anchor: str
    summary: str
    description: str
    params: list[Field] = field(default_factory=list)
    body: str | None = None
    responses: list[tuple[str, str, str | None]] = field(default_factory=list)


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict[str, Any]) -> tuple[str, str | None]:
    """A short type for a schema (``string (date)``, ``array of ApiKey``) and the schema it names, if any."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return name, name
    kind = str(schema.get("type", "object"))
    if kind == "array":
        inner, ref = _type(schema.get("items", {}))
        return f"array of {inner}", ref
    if "format" in schema:
        kind = f"{kind} ({schema['format']})"
    if schema.get("nullable"):
        kind += ", null"
    return kind, None


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(str(v) for v in schema["enum"]))
    if "items" in schema and "enum" in schema["items"]:
        parts.append("each one of " + ", ".join(str(v) for v in schema["items"]["enum"]))
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
                       ("pattern", "matches")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if schema.get("default") is not None:
        parts.append(f"default {schema['default']!r}")
    return "; ".join(parts)


def _fields(schema: dict[str, Any]) -> list[Field]:
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        kind, ref = _type(prop)
        out.append(Field(name, kind, ref, name in required, str(prop.get("description", "")), _constraints(prop)))
    return out


def _response(spec: dict[str, Any], answer: dict[str, Any]) -> tuple[str, str | None]:
    if "$ref" in answer:
        answer = spec.get("components", {}).get("responses", {}).get(_ref_name(answer["$ref"]), {})
    content: dict[str, Any] = answer.get("content", {})
    first: dict[str, Any] = next(iter(content.values()), {})
    schema: dict[str, Any] = first.get("schema", {})
    return str(answer.get("description", "")), _type(schema)[1] if schema else None


def _operations(spec: dict[str, Any]) -> dict[str, list[Operation]]:
    """Operations by tag, each tag's in path order."""
    by_tag: dict[str, list[Operation]] = {}
    for path, item in sorted(spec.get("paths", {}).items()):
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            summary, _, description = str(op.get("summary", "")).partition("\n\n")
            found = Operation(method.upper(), path, f"{method}-{path.strip('/').replace('/', '-')}".replace(
                "{", "").replace("}", ""), summary, (description or op.get("description", "")).strip())
            for p in [*shared, *op.get("parameters", [])]:
                kind, ref = _type(p.get("schema", {}))
                found.params.append(Field(f"{p['name']} ({p['in']})", kind, ref, bool(p.get("required")),
                                          str(p.get("description", "")), _constraints(p.get("schema", {}))))
            body = op.get("requestBody", {}).get("content", {})
            if body:
                found.body = _type(next(iter(body.values())).get("schema", {}))[0]
            for code, answer in sorted(op.get("responses", {}).items()):
                text, ref = _response(spec, answer)
                found.responses.append((code, text, ref))
            for tag in op.get("tags", ["other"]):
                by_tag.setdefault(tag, []).append(found)
    return by_tag


def page_context(spec: dict[str, Any]) -> dict[str, Any]:
    """What the template needs: the document's title and description, operations by tag, schemas by name."""
    schemas = {name: _fields(s) for name, s in sorted(spec.get("components", {}).get("schemas", {}).items())}
    return {"info": spec.get("info", {}), "operations": _operations(spec), "schemas": schemas}


def init_app(app: Flask, api: Api, prefix: str) -> None:
    """Serve the page at ``prefix``/docs (public, like the OpenAPI document)."""

    @allow_public
    def api_docs() -> ResponseReturnValue:
        """The API reference, rendered from the OpenAPI document (no tenant data)."""
        context = page_context(api.spec.to_dict())
        return render_template("api/docs.html", openapi_url=f"{prefix}/openapi.json", **context)

    app.add_url_rule(f"{prefix}/{DOCS_PATH}", "api_docs", api_docs)
