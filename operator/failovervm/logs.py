"""Log setup for the controller and the agents: text (default) or one JSON object per line, always
carrying the component and node, and the VM (`namespace/name`) where a line is about one."""

from __future__ import annotations

import json
import logging
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def __init__(self, component: str, node: str | None) -> None:
        super().__init__()
        self.component, self.node = component, node

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "component": self.component,
            "msg": record.getMessage(),
        }
        if self.node:
            doc["node"] = self.node
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(component: str, node: str | None = None, fmt: str = "text") -> None:
    import time

    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter(component, node))
    else:
        prefix = f"{component}" + (f" node={node}" if node else "")
        formatter = logging.Formatter(f"%(asctime)s %(levelname)s {prefix} %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
