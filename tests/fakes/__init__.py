"""Shared in-memory fakes of the operator's two adapters, for unit tests.

- `FakeKube` (tests/fakes/kube.py): every `failovervm.kube.KubeAPI` method over in-memory objects,
  with resourceVersions and the production read-modify-write code, recorded Events and calls, and
  failures and interleavings (`before`) that a test switches on.
- `FakeDomainManager` (tests/fakes/domains.py): the agent's `DomainManager` protocol over in-memory
  domains, remote hosts for migrations, recorded changes and switchable failures.

Subclass or configure them for special behaviour; mypy checks them strictly against the protocols.
"""

from tests.fakes.domains import FakeDomain, FakeDomainManager
from tests.fakes.kube import FakeKube, RecordedEvent

__all__ = ["FakeDomain", "FakeDomainManager", "FakeKube", "RecordedEvent"]
