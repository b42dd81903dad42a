"""Structured logs carry component, node and VM."""

from __future__ import annotations

import json
import logging

from failovervm.logs import JSONFormatter


def test_json_lines_have_component_node_and_vm() -> None:
    rec = logging.LogRecord("failovervm.agent", logging.INFO, __file__, 1, "migrated %s", ("x",), None)
    rec.vm = "default/demo"
    doc = json.loads(JSONFormatter("agent", "sandbox-node-1").format(rec))
    assert doc["component"] == "agent" and doc["node"] == "sandbox-node-1" and doc["vm"] == "default/demo"
    assert doc["msg"] == "migrated x" and doc["level"] == "info" and doc["ts"].endswith("Z")
