"""The JSON Schema of a pipeline config, for editors: every section, and for each built-in
(or registered) stage type the schema of its parameters."""

from __future__ import annotations

from typing import Any

from tamis.pipeline import Pipeline
from tamis.stages import known_types, stage_class


def pipeline_schema() -> dict[str, Any]:
    schema = Pipeline.model_json_schema()
    schema["properties"].pop("path", None)  # the file's own location, not a key in it
    schema["required"] = [key for key in schema.get("required", []) if key != "path"]
    definitions = schema.setdefault("$defs", {})
    variants = []
    for type_name in known_types():
        params = stage_class(type_name).Params.model_json_schema(ref_template="#/$defs/{model}")
        definitions.update(params.pop("$defs", {}))
        title = f"{type_name}_params"
        definitions[title] = params
        variants.append(
            {
                "if": {"properties": {"type": {"const": type_name}}},
                "then": {"properties": {"params": {"$ref": f"#/$defs/{title}"}}},
            }
        )
    spec = definitions.get("StageSpec", {})
    spec["allOf"] = variants
    spec.setdefault("properties", {})["type"] = {
        "type": "string",
        "description": "a built-in or registered stage type, or an import path package.module:Name",
        "examples": known_types(),
    }
    schema["properties"]["stages"] = {
        "description": "stage instances in order: a list of {name, type, params}, or a mapping name -> params",
        "anyOf": [
            {"type": "array", "items": {"$ref": "#/$defs/StageSpec"}},
            {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
        ],
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tamis pipeline"
    return schema
