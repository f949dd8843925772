"""Generate the API reference (Markdown) from the OpenAPI specification.

``python -m consortium.openapi_docs [OUT]`` or ``confed coord openapi --out OUT``;
the committed ``docs/operator/api.md`` is checked against this output by the tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from consortium.api.app import API_PREFIX, openapi_spec

HEADER = """# Coordinator API reference

Generated from the OpenAPI specification by `confed coord openapi` (do not edit by hand).
The live specification is served at `{prefix}/openapi.json` and an interactive view at
`{prefix}/docs`.

{description}

"""


def _schema_name(schema: dict[str, Any] | bool) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    if "allOf" in schema:
        return " and ".join(_schema_name(s) for s in schema["allOf"])
    if schema.get("type") == "object" and "additionalProperties" in schema:
        return f"object of {_schema_name(schema['additionalProperties'])}"
    typ = schema.get("type", "any")
    if "enum" in schema:
        return f"{typ} ({' / '.join(repr(v) for v in schema['enum'])})"
    if "const" in schema:
        return f"{typ} ({schema['const']!r})"
    if "format" in schema:
        return f"{typ} ({schema['format']})"
    return typ


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    if op.get("summary"):
        lines += [op["summary"] + ".", ""]
    if op.get("description"):
        lines += [op["description"], ""]
    secured = bool(op.get("security"))
    lines += [f"Authentication: {'bearer token' if secured else 'none'}.", ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            lines.append(
                f"| `{p['name']}` | {p['in']} | {_schema_name(p.get('schema', {}))} | "
                f"{'yes' if p.get('required') else 'no'} | {p.get('description', '')} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        for ctype, content in body.get("content", {}).items():
            lines += [f"Request body (`{ctype}`): {_schema_name(content.get('schema', {}))}", ""]
    lines += ["| status | description | body |", "|---|---|---|"]
    for status, resp in sorted(op.get("responses", {}).items()):
        content = resp.get("content", {})
        schema = next(iter(content.values()), {}).get("schema", {}) if content else {}
        shown = _schema_name(schema) if schema else ""
        lines.append(f"| {status} | {resp.get('description', '')} | {shown} |")
    lines.append("")
    return lines


def _schemas(components: dict[str, Any]) -> list[str]:
    lines = ["## Schemas", ""]
    for name, schema in sorted(components.get("schemas", {}).items()):
        lines += [f'<a id="schema-{name.lower()}"></a>', f"### {name}", ""]
        if schema.get("description"):
            lines += [schema["description"], ""]
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        if props:
            lines += ["| field | type | required | description |", "|---|---|---|---|"]
            for field, sub in props.items():
                desc = sub.get("description", "").replace("|", "\\|")
                lines.append(
                    f"| `{field}` | {_schema_name(sub)} | {'yes' if field in required else 'no'} "
                    f"| {desc} |"
                )
            lines.append("")
    return lines


def render(spec: dict[str, Any] | None = None) -> str:
    """The Markdown reference for ``spec`` (default: the coordinator's own)."""
    spec = spec or openapi_spec()
    info = spec.get("info", {})
    lines = [
        HEADER.format(prefix=API_PREFIX, description=info.get("description", "")).rstrip(),
        "",
        f"API version {info.get('version', '?')}, OpenAPI {spec.get('openapi', '?')}.",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method, path, op))
    for tag, ops in by_tag.items():
        lines += [f"## {tag}", ""]
        for method, path, op in ops:
            lines += _operation(method, path, op)
    lines += _schemas(spec.get("components", {}))
    return "\n".join(lines).rstrip() + "\n"


def write_api_reference(out: Path | str) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--json":
        print(json.dumps(openapi_spec(), indent=2))
        return
    print(write_api_reference(argv[0] if argv else "docs/operator/api.md"))


if __name__ == "__main__":
    main()
