"""Shared in-memory fakes of the operator's adapters, for unit tests.

- `FakeKube` (tests/fakes/kube.py): every `failovervm.kube.KubeAPI` method over in-memory objects,
  with resourceVersions and the production read-modify-write code, recorded Events, and failures
  that a test switches on.

Subclass or configure them for special behaviour; mypy checks them strictly against the protocols.
"""

from tests.fakes.kube import FakeKube, RecordedEvent

__all__ = ["FakeKube", "RecordedEvent"]
