"""The published event catalogue: JSON Schema per event and an AsyncAPI document.

``python -m tsop_events.catalogue --write`` regenerates ``libs/events/catalogue``;
``--check`` fails when the committed files and the models disagree, so a change
that would surprise a downstream consumer cannot land unnoticed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tsop_events.schemas import EVENT_TYPES, WireEvent
from tsop_events.topics import DOMAIN_TOPICS, Topic

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "catalogue"

TOPIC_DOCS = {
    Topic.tickets: "Every event in a ticket's life, key = ticket id; one partition holds a ticket's whole history.",
    Topic.incidents: "Service interruptions, key = incident id.",
    Topic.workforce: "Technicians, qualifications and capacity, key = technician id.",
    Topic.complaints: "Complaints, key = complaint id.",
    Topic.channels: "Registered channel systems and their credentials (SHA-256 only), key = channel id.",
    Topic.customers: "Erasures of customers' personal data (crypto-shredding, docs/erasure.md), key = customer id.",
    Topic.deadletter: "Records a consumer could not process, with the error.",
}

CE_HEADERS = {
    "type": "object",
    "description": "CloudEvents 1.0 Kafka binary binding",
    "required": ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"],
    "properties": {
        "ce_specversion": {"const": "1.0"},
        "ce_id": {"type": "string", "description": "stable per domain event (aggregate id + version)"},
        "ce_type": {"type": "string"},
        "ce_source": {"type": "string", "description": "the emitting service"},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "the record key"},
        "ce_correlationid": {"type": "string"},
        "ce_causationid": {"type": "string", "description": "ce_id of the event that caused this one"},
        "content-type": {"const": "application/json"},
    },
}


def schema_of(cls: type[WireEvent]) -> dict[str, Any]:
    schema = cls.model_json_schema()
    schema["$id"] = f"urn:tsop:event:{cls.event_type}"
    schema["title"] = cls.event_type
    schema["description"] = cls.doc
    schema["x-topic"] = cls.topic.value
    schema["x-schema-version"] = cls.schema_version
    return schema


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in EVENT_TYPES.values():
        name = cls.__name__
        messages[name] = {
            "name": cls.event_type,
            "title": name,
            "summary": cls.doc,
            "contentType": "application/json",
            "headers": CE_HEADERS,
            "payload": {"$ref": f"./schemas/{cls.event_type}.json"},
        }
    for topic in (*DOMAIN_TOPICS, Topic.deadletter):
        refs = {
            c.__name__: {"$ref": f"#/components/messages/{c.__name__}"}
            for c in EVENT_TYPES.values()
            if c.topic is topic
        }
        channels[topic.value] = {
            "address": f"{{prefix}}{topic.value}",
            "description": TOPIC_DOCS[topic],
            "parameters": {"prefix": {"description": "TSOP_TOPIC_PREFIX, default 'tsop.'"}},
            "messages": refs,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "TSOP domain events",
            "version": "1.0.0",
            "description": "Events the TSOP services publish. Key = the entity id; retention is infinite.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages},
    }


def render() -> dict[str, str]:
    files = {
        f"schemas/{c.event_type}.json": json.dumps(schema_of(c), indent=2, sort_keys=True) + "\n"
        for c in EVENT_TYPES.values()
    }
    files["asyncapi.json"] = json.dumps(asyncapi(), indent=2, sort_keys=True) + "\n"
    return files


def check(directory: Path = DEFAULT_DIR) -> list[str]:
    """The differences between the models and the committed catalogue."""
    expected = render()
    problems = []
    for rel, text in expected.items():
        path = directory / rel
        if not path.exists():
            problems.append(f"missing {rel}")
        elif path.read_text() != text:
            problems.append(f"out of date {rel}")
    for path in (directory / "schemas").glob("*.json"):
        if f"schemas/{path.name}" not in expected:
            problems.append(f"no model for schemas/{path.name} (a removed event breaks consumers)")
    return problems


def write(directory: Path = DEFAULT_DIR) -> None:
    for rel, text in render().items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    if args.write:
        write(args.dir)
        return
    problems = check(args.dir)
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
